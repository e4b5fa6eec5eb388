//! Record framing: `[u32 payload length LE][u32 CRC-32 of the payload LE][payload]`.
//!
//! The reader tells a torn tail (a crash cut the last append short) from corruption (a complete
//! record that fails its checksum) so recovery can say which one it saw; both stop replay.

/// Bytes of framing in front of every payload.
pub(super) const FRAME: usize = 8;

/// Largest payload accepted. Events are tens of bytes; a length beyond this is damage, not data.
pub(super) const MAX_PAYLOAD: usize = 1 << 20;

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), table-driven. Small and dependency
/// free; `crc32fast` computes the same function faster if replay ever needs it.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC_TABLE[((crc ^ byte as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

static CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Appends one framed record to `out` whose payload `encode` writes. A payload over
/// [`MAX_PAYLOAD`] is taken back out and its size returned as the error.
pub(super) fn push(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), usize> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    encode(out);
    let len = out.len() - start - FRAME;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(len);
    }
    let crc = crc32(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Why reading stopped before the end of the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Damage {
    /// The data ends inside a record, or in zeros where a record should start: what a crash
    /// during an append leaves behind.
    Torn(String),
    /// A complete record that is not what was written.
    Corrupt(String),
}

impl Damage {
    pub(super) fn reason(&self) -> &str {
        match self {
            Damage::Torn(r) | Damage::Corrupt(r) => r,
        }
    }
}

/// Walks the records of a file's contents.
pub(super) struct Records<'a> {
    data: &'a [u8],
    /// Offset of the next record: after an error, where the damage starts.
    pub(super) pos: usize,
}

impl<'a> Records<'a> {
    pub(super) fn new(data: &'a [u8]) -> Records<'a> {
        Records { data, pos: 0 }
    }

    /// The next payload, `Ok(None)` at a clean end, or the damage found at `self.pos` (which
    /// then stays put).
    pub(super) fn next_payload(&mut self) -> Result<Option<&'a [u8]>, Damage> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let zeros = || rest.iter().all(|&b| b == 0);
        if rest.len() < FRAME {
            return Err(Damage::Torn(format!("{} bytes where a record header needs {FRAME}", rest.len())));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_PAYLOAD {
            return Err(if zeros() {
                Damage::Torn(format!("{} zero bytes where a record should start", rest.len()))
            } else {
                Damage::Corrupt(format!("implausible record length {len}"))
            });
        }
        if rest.len() - FRAME < len {
            return Err(Damage::Torn(format!("record of {len} bytes cut short after {}", rest.len() - FRAME)));
        }
        let payload = &rest[FRAME..FRAME + len];
        let actual = crc32(payload);
        if actual != crc {
            return Err(Damage::Corrupt(format!(
                "checksum mismatch in a {len}-byte record (stored {crc:08x}, computed {actual:08x})"
            )));
        }
        self.pos += FRAME + len;
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn framed_records_read_back_and_a_cut_is_torn() {
        let mut data = Vec::new();
        push(&mut data, |o| o.extend_from_slice(b"first")).unwrap();
        push(&mut data, |o| o.extend_from_slice(b"second")).unwrap();
        let mut r = Records::new(&data);
        assert_eq!(r.next_payload(), Ok(Some(&b"first"[..])));
        assert_eq!(r.next_payload(), Ok(Some(&b"second"[..])));
        assert_eq!(r.next_payload(), Ok(None));

        let cut = &data[..data.len() - 1];
        let mut r = Records::new(cut);
        r.next_payload().unwrap();
        assert!(matches!(r.next_payload(), Err(Damage::Torn(_))));
        assert_eq!(r.pos, FRAME + 5, "position stays at the start of the damaged record");
    }

    #[test]
    fn zero_filled_tail_is_torn_and_a_flipped_byte_is_corrupt() {
        let mut data = Vec::new();
        push(&mut data, |o| o.extend_from_slice(b"event")).unwrap();
        let mut zeroed = data.clone();
        zeroed.extend_from_slice(&[0; 32]);
        let mut r = Records::new(&zeroed);
        r.next_payload().unwrap();
        assert!(matches!(r.next_payload(), Err(Damage::Torn(_))));

        data[FRAME + 2] ^= 0x40;
        assert!(matches!(Records::new(&data).next_payload(), Err(Damage::Corrupt(_))));
    }

    #[test]
    fn oversized_payload_is_refused_and_leaves_no_trace() {
        let mut data = vec![1, 2, 3];
        assert_eq!(push(&mut data, |o| o.resize(o.len() + MAX_PAYLOAD + 1, 7)), Err(MAX_PAYLOAD + 1));
        assert_eq!(data, vec![1, 2, 3]);
    }
}
