//! The GPUs memtrack's `getGpuDeviceInfo` lists: the DRM cards autoconfig's probe finds, with
//! their card number as id and the driver's name.

use std::path::Path;

/// One GPU as memtrack reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDevice {
    /// The card number (`card0` → 0).
    pub id: i32,
    /// The driver (`amdgpu`, `virtio_gpu`), else the device name, else the card.
    pub name: String,
}

/// The DRM cards under `sys_root`/class/drm; none where there is no DRM class.
pub fn gpu_devices(sys_root: &Path) -> Vec<GpuDevice> {
    let cards = crate::autoconfig::probe::drm(&sys_root.join("class/drm")).unwrap_or_default();
    let mut out: Vec<GpuDevice> = cards
        .into_iter()
        .filter_map(|c| {
            let id = c.card.strip_prefix("card")?.parse().ok()?;
            let name = c.driver.or(c.device).unwrap_or(c.card);
            Some(GpuDevice { id, name })
        })
        .collect();
    out.sort_by_key(|d| d.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_listed_by_number_with_their_driver() {
        let dir = tempfile::tempdir().unwrap();
        let drm = dir.path().join("class/drm");
        for (card, uevent) in
            [("card1", "DRIVER=virtio_gpu\n"), ("card0", "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:03:00.0\n")]
        {
            std::fs::create_dir_all(drm.join(card).join("device")).unwrap();
            std::fs::write(drm.join(card).join("device/uevent"), uevent).unwrap();
        }
        std::fs::create_dir_all(drm.join("renderD128")).unwrap();
        assert_eq!(
            gpu_devices(dir.path()),
            vec![GpuDevice { id: 0, name: "amdgpu".into() }, GpuDevice { id: 1, name: "virtio_gpu".into() }]
        );
    }

    #[test]
    fn no_drm_class_no_gpus() {
        assert!(gpu_devices(tempfile::tempdir().unwrap().path()).is_empty());
    }
}
