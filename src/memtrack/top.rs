//! `chargectl top`: who pays for graphics memory now, per app (each paying process, and charges
//! parked on a dead app's cgroup), with the change since the last refresh. Pure: the caller
//! lists the charges and names the processes; this groups, diffs and renders.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use crate::policy::format_bytes;

/// One charge as the service lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// 0: parked on `cgroup`, no process.
    pub pid: u32,
    pub uid: u32,
    pub cgroup: String,
    pub pools: Vec<String>,
    pub bytes: u64,
}

/// An app as a row: a paying process, or a cgroup that pays without one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum AppKey {
    Process(u32),
    Parked(String),
}

#[derive(Clone, Debug)]
struct Row {
    app: String,
    pid: Option<u32>,
    uid: u32,
    pools: BTreeSet<String>,
    buffers: usize,
    bytes: u64,
    change: i128,
}

/// The table between refreshes: what each app paid at the last one.
#[derive(Debug, Default)]
pub struct Top {
    previous: Option<HashMap<AppKey, (String, u32, u64)>>,
}

impl Top {
    /// Renders the table for `charges` (biggest payer first), naming processes with `name_of`;
    /// apps that paid at the last refresh and pay nothing now are listed once more with 0.
    pub fn refresh(&mut self, charges: &[Charge], name_of: impl Fn(u32) -> Option<String>) -> String {
        let mut rows: HashMap<AppKey, Row> = HashMap::new();
        for c in charges {
            let key = if c.pid == 0 { AppKey::Parked(c.cgroup.clone()) } else { AppKey::Process(c.pid) };
            let row = rows.entry(key).or_insert_with(|| Row {
                app: match c.pid {
                    0 => format!("(parked) {}", c.cgroup),
                    pid => name_of(pid).unwrap_or_else(|| format!("pid {pid}")),
                },
                pid: (c.pid != 0).then_some(c.pid),
                uid: c.uid,
                pools: BTreeSet::new(),
                buffers: 0,
                bytes: 0,
                change: 0,
            });
            row.pools.extend(c.pools.iter().cloned());
            row.buffers += 1;
            row.bytes = row.bytes.saturating_add(c.bytes);
        }
        let previous = self.previous.take();
        for (key, row) in rows.iter_mut() {
            let before = previous.as_ref().and_then(|p| p.get(key)).map_or(0, |(_, _, b)| *b);
            row.change = i128::from(row.bytes) - i128::from(before);
        }
        for (key, (app, uid, before)) in previous.iter().flatten() {
            if !rows.contains_key(key) {
                let pid = match key {
                    AppKey::Process(pid) => Some(*pid),
                    AppKey::Parked(_) => None,
                };
                let gone = Row {
                    app: format!("{app} (gone)"),
                    pid,
                    uid: *uid,
                    pools: BTreeSet::new(),
                    buffers: 0,
                    bytes: 0,
                    change: -i128::from(*before),
                };
                rows.insert(key.clone(), gone);
            }
        }
        let first = previous.is_none();
        self.previous = Some(
            rows.iter()
                .filter(|(_, r)| r.bytes > 0)
                .map(|(k, r)| (k.clone(), (r.app.clone(), r.uid, r.bytes)))
                .collect(),
        );
        render(rows.into_values().collect(), first)
    }
}

fn signed_bytes(change: i128) -> String {
    let magnitude = format_bytes(u64::try_from(change.unsigned_abs()).unwrap_or(u64::MAX));
    match change {
        0 => "0".into(),
        c if c > 0 => format!("+{magnitude}"),
        _ => format!("-{magnitude}"),
    }
}

fn render(mut rows: Vec<Row>, first: bool) -> String {
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.app.cmp(&b.app)).then(a.pid.cmp(&b.pid)));
    let total: u64 = rows.iter().map(|r| r.bytes).fold(0, u64::saturating_add);
    let paying = rows.iter().filter(|r| r.bytes > 0).count();
    let mut out = String::new();
    let _ = writeln!(out, "graphics memory charged: {} in {paying} apps", format_bytes(total));
    let _ = writeln!(
        out,
        "{:<32} {:>7} {:>6} {:>8} {:>11} {:>11}  POOLS",
        "APP", "PID", "UID", "BUFFERS", "BYTES", "CHANGE"
    );
    for r in rows {
        let change = if first { "-".to_string() } else { signed_bytes(r.change) };
        let pid = r.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
        let pools = r.pools.into_iter().collect::<Vec<_>>().join(",");
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>6} {:>8} {:>11} {:>11}  {}",
            r.app,
            pid,
            r.uid,
            r.buffers,
            format_bytes(r.bytes),
            change,
            if pools.is_empty() { "-" } else { &pools }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(pid: u32, uid: u32, pool: &str, bytes: u64) -> Charge {
        Charge { pid, uid, cgroup: format!("/uid_{uid}/pid_{pid}"), pools: vec![pool.into()], bytes }
    }

    fn lines(table: &str) -> Vec<Vec<String>> {
        table.lines().skip(2).map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    }

    #[test]
    fn apps_are_summed_biggest_first_and_the_change_is_since_the_last_refresh() {
        let mut top = Top::default();
        let name = |pid: u32| (pid == 10).then(|| "com.example.game".to_string());
        let first = top.refresh(
            &[
                charge(10, 10001, "memcg", 4 << 20),
                charge(10, 10001, "cma/display", 2 << 20),
                charge(11, 10002, "memcg", 1 << 20),
            ],
            name,
        );
        assert!(first.starts_with("graphics memory charged: 7 MiB in 2 apps"), "{first}");
        let rows = lines(&first);
        assert_eq!(rows[0][..7], ["com.example.game", "10", "10001", "2", "6", "MiB", "-"]);
        assert_eq!(rows[0][7], "cma/display,memcg");
        assert_eq!(rows[1][..3], ["pid", "11", "11"], "an unnamed process is shown by its pid");

        let second = top.refresh(&[charge(10, 10001, "memcg", 4 << 20), charge(12, 10003, "memcg", 1 << 20)], name);
        let rows = lines(&second);
        assert_eq!(rows[0][..8], ["com.example.game", "10", "10001", "1", "4", "MiB", "-2", "MiB"]);
        assert_eq!(rows[1][..9], ["pid", "12", "12", "10003", "1", "1", "MiB", "+1", "MiB"]);
        assert_eq!(rows[2][..4], ["pid", "11", "(gone)", "11"], "{second}");
        assert!(rows[2].contains(&"-1".to_string()), "{second}");

        let third = top.refresh(&[charge(10, 10001, "memcg", 4 << 20), charge(12, 10003, "memcg", 1 << 20)], name);
        assert_eq!(lines(&third).len(), 2, "a gone app is listed once: {third}");
    }

    #[test]
    fn charges_parked_on_a_dead_apps_cgroup_are_a_row_of_their_own() {
        let parked =
            Charge { pid: 0, uid: 10001, cgroup: "/uid_10001".into(), pools: vec!["memcg".into()], bytes: 4096 };
        let table = Top::default().refresh(&[parked], |_| None);
        assert_eq!(lines(&table)[0][..4], ["(parked)", "/uid_10001", "-", "10001"]);
    }
}
