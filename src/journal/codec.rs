//! The payloads: a file header, and events in a compact binary form.
//!
//! An event is a tag byte followed by its fields in declaration order: integers as LEB128
//! varints, strings as a varint length and UTF-8 bytes, enums as one byte. A typical `Charged`
//! is ~40 bytes against ~110 as JSON, and decoding is a few branches per field. Decoding is
//! total: any bytes give an event or an error, and trailing bytes are an error.

use crate::ledger::{Event, HeapClass, HeapSpec, LimitKind};

/// Format version written in every header; bumped when a payload changes meaning. Version 2
/// added the owner's start time to `Charged`, `Transferred` and `Reassigned`; version 1 files
/// are still read (their owners' start times are 0, unknown) and are rewritten at once as 2.
pub(super) const VERSION: u16 = 2;

/// The oldest format version still read.
const OLDEST: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Journal,
    Snapshot,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Journal => b"CTJL",
            Kind::Snapshot => b"CTSN",
        }
    }
}

/// First record of every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: Kind,
    /// The format version the file is written in: [`VERSION`] for every file this build writes.
    pub(super) version: u16,
    pub(super) generation: u64,
    /// Snapshots: how many event records follow, so a snapshot cut short is never taken as
    /// complete. Journals: 0.
    pub(super) events: u64,
}

const HEADER_LEN: usize = 4 + 2 + 8 + 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeaderError {
    /// Our magic, a version we cannot read: a newer build wrote it. Not damage, and not ours to
    /// discard.
    Version(u16),
    Invalid(String),
}

pub(super) fn encode_header(h: &Header, out: &mut Vec<u8>) {
    out.extend_from_slice(h.kind.magic());
    out.extend_from_slice(&h.version.to_le_bytes());
    out.extend_from_slice(&h.generation.to_le_bytes());
    out.extend_from_slice(&h.events.to_le_bytes());
}

pub(super) fn decode_header(kind: Kind, p: &[u8]) -> Result<Header, HeaderError> {
    if p.len() < 6 || &p[0..4] != kind.magic() {
        return Err(HeaderError::Invalid(format!("no {} header", String::from_utf8_lossy(kind.magic()))));
    }
    let version = u16::from_le_bytes([p[4], p[5]]);
    if !(OLDEST..=VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    if p.len() != HEADER_LEN {
        return Err(HeaderError::Invalid(format!("header of {} bytes, expected {HEADER_LEN}", p.len())));
    }
    let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    Ok(Header { kind, version, generation: u64_at(6), events: u64_at(14) })
}

const REGION_ADDED: u8 = 1;
const HEAP_ADDED: u8 = 2;
const CHARGED: u8 = 3;
const RELEASED: u8 = 4;
const TRANSFERRED: u8 = 5;
const REASSIGNED: u8 = 6;
const MIGRATED: u8 = 7;
const REPARENTED: u8 = 8;
const LIMIT_SET: u8 = 9;
const EVICTED: u8 = 10;
const RESTORED: u8 = 11;
const PINNED: u8 = 12;
const UNPINNED: u8 = 13;

const CLASSES: [HeapClass; 4] = [HeapClass::System, HeapClass::Cma, HeapClass::Carveout, HeapClass::Vram];

pub(super) fn encode(event: &Event, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    match event {
        Event::RegionAdded { region, capacity } => {
            w.byte(REGION_ADDED);
            w.str(region);
            w.uint(*capacity);
        }
        Event::HeapAdded { heap, enforce } => {
            w.byte(HEAP_ADDED);
            w.str(&heap.name);
            w.byte(CLASSES.iter().position(|c| c == &heap.class).expect("every class is listed") as u8);
            match &heap.region {
                Some(r) => {
                    w.byte(1);
                    w.str(r);
                }
                None => w.byte(0),
            }
            w.byte(*enforce as u8);
        }
        Event::Charged { inode, size, heap, pid, start, cgroup } => {
            w.byte(CHARGED);
            w.uint(*inode);
            w.uint(*size);
            w.str(heap);
            w.uint(*pid as u64);
            w.uint(*start);
            w.str(cgroup);
        }
        Event::Released { inode } => w.inode(RELEASED, *inode),
        Event::Transferred { inode, pid, start, cgroup } | Event::Reassigned { inode, pid, start, cgroup } => {
            w.byte(if matches!(event, Event::Transferred { .. }) { TRANSFERRED } else { REASSIGNED });
            w.uint(*inode);
            w.uint(*pid as u64);
            w.uint(*start);
            w.str(cgroup);
        }
        Event::Migrated { pid, cgroup } => {
            w.byte(MIGRATED);
            w.uint(*pid as u64);
            w.str(cgroup);
        }
        Event::Reparented { cgroup } => {
            w.byte(REPARENTED);
            w.str(cgroup);
        }
        Event::LimitSet { cgroup, pool, kind, value } => {
            w.byte(LIMIT_SET);
            w.str(cgroup);
            w.str(pool);
            w.byte(LimitKind::ALL.iter().position(|k| k == kind).expect("every kind is listed") as u8);
            w.uint(*value);
        }
        Event::Evicted { inode } => w.inode(EVICTED, *inode),
        Event::Restored { inode } => w.inode(RESTORED, *inode),
        Event::Pinned { inode } => w.inode(PINNED, *inode),
        Event::Unpinned { inode } => w.inode(UNPINNED, *inode),
    }
}

/// Decodes one event of a file written in format `version` (one [`decode_header`] accepted).
pub(super) fn decode(payload: &[u8], version: u16) -> Result<Event, &'static str> {
    let mut r = Reader { data: payload, pos: 0 };
    let start = |r: &mut Reader| if version >= 2 { r.uint() } else { Ok(0) };
    let event = match r.byte()? {
        REGION_ADDED => Event::RegionAdded { region: r.str()?, capacity: r.uint()? },
        HEAP_ADDED => {
            let name = r.str()?;
            let class = *CLASSES.get(r.byte()? as usize).ok_or("unknown heap class")?;
            let region = match r.byte()? {
                0 => None,
                1 => Some(r.str()?),
                _ => return Err("bad region flag"),
            };
            Event::HeapAdded { heap: HeapSpec { name, class, region }, enforce: r.flag()? }
        }
        CHARGED => Event::Charged {
            inode: r.uint()?,
            size: r.uint()?,
            heap: r.str()?,
            pid: r.pid()?,
            start: start(&mut r)?,
            cgroup: r.str()?,
        },
        RELEASED => Event::Released { inode: r.uint()? },
        TRANSFERRED => Event::Transferred { inode: r.uint()?, pid: r.pid()?, start: start(&mut r)?, cgroup: r.str()? },
        REASSIGNED => Event::Reassigned { inode: r.uint()?, pid: r.pid()?, start: start(&mut r)?, cgroup: r.str()? },
        MIGRATED => Event::Migrated { pid: r.pid()?, cgroup: r.str()? },
        REPARENTED => Event::Reparented { cgroup: r.str()? },
        LIMIT_SET => Event::LimitSet {
            cgroup: r.str()?,
            pool: r.str()?,
            kind: *LimitKind::ALL.get(r.byte()? as usize).ok_or("unknown limit kind")?,
            value: r.uint()?,
        },
        EVICTED => Event::Evicted { inode: r.uint()? },
        RESTORED => Event::Restored { inode: r.uint()? },
        PINNED => Event::Pinned { inode: r.uint()? },
        UNPINNED => Event::Unpinned { inode: r.uint()? },
        _ => return Err("unknown event tag"),
    };
    if r.pos != payload.len() {
        return Err("trailing bytes after the event");
    }
    Ok(event)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn str(&mut self, s: &str) {
        self.uint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn inode(&mut self, tag: u8, inode: u64) {
        self.byte(tag);
        self.uint(inode);
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.data.get(self.pos).ok_or("event cut short")?;
        self.pos += 1;
        Ok(b)
    }

    fn flag(&mut self) -> Result<bool, &'static str> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad boolean"),
        }
    }

    fn uint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err("integer overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("integer overflows 64 bits")
    }

    fn pid(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.uint()?).map_err(|_| "pid overflows 32 bits")
    }

    fn str(&mut self) -> Result<String, &'static str> {
        let len = self.uint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|&e| e <= self.data.len())
            .ok_or("string cut short")?;
        let s = std::str::from_utf8(&self.data[self.pos..end]).map_err(|_| "string is not UTF-8")?;
        self.pos = end;
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "/uid_[0-9]{1,5}/pid_[0-9]{1,5}", "\\PC{0,40}"]
    }

    fn limit_kind() -> impl Strategy<Value = LimitKind> {
        (0..4usize).prop_map(|i| LimitKind::ALL[i])
    }

    fn event() -> impl Strategy<Value = Event> {
        let class = (0..4usize).prop_map(|i| CLASSES[i]);
        prop_oneof![
            (text(), any::<u64>()).prop_map(|(region, capacity)| Event::RegionAdded { region, capacity }),
            (text(), class, prop::option::of(text()), any::<bool>()).prop_map(|(name, class, region, enforce)| {
                Event::HeapAdded { heap: HeapSpec { name, class, region }, enforce }
            }),
            (any::<u64>(), any::<u64>(), text(), any::<u32>(), any::<u64>(), text()).prop_map(
                |(inode, size, heap, pid, start, cgroup)| Event::Charged { inode, size, heap, pid, start, cgroup }
            ),
            any::<u64>().prop_map(|inode| Event::Released { inode }),
            (any::<u64>(), any::<u32>(), any::<u64>(), text())
                .prop_map(|(inode, pid, start, cgroup)| { Event::Transferred { inode, pid, start, cgroup } }),
            (any::<u64>(), any::<u32>(), any::<u64>(), text())
                .prop_map(|(inode, pid, start, cgroup)| { Event::Reassigned { inode, pid, start, cgroup } }),
            (any::<u32>(), text()).prop_map(|(pid, cgroup)| Event::Migrated { pid, cgroup }),
            text().prop_map(|cgroup| Event::Reparented { cgroup }),
            (text(), text(), limit_kind(), any::<u64>()).prop_map(|(cgroup, pool, kind, value)| Event::LimitSet {
                cgroup,
                pool,
                kind,
                value
            }),
            any::<u64>().prop_map(|inode| Event::Evicted { inode }),
            any::<u64>().prop_map(|inode| Event::Restored { inode }),
            any::<u64>().prop_map(|inode| Event::Pinned { inode }),
            any::<u64>().prop_map(|inode| Event::Unpinned { inode }),
        ]
    }

    #[test]
    fn header_round_trips_and_a_newer_version_is_told_apart() {
        let h = Header { kind: Kind::Snapshot, version: VERSION, generation: 7, events: 42 };
        let mut p = Vec::new();
        encode_header(&h, &mut p);
        assert_eq!(decode_header(Kind::Snapshot, &p), Ok(h));
        assert!(
            matches!(decode_header(Kind::Journal, &p), Err(HeaderError::Invalid(_))),
            "a snapshot is not a journal"
        );
        p[4] = 1;
        assert_eq!(decode_header(Kind::Snapshot, &p), Ok(Header { version: 1, ..h }), "version 1 is still read");
        p[4] = 3;
        assert_eq!(decode_header(Kind::Snapshot, &p), Err(HeaderError::Version(3)));
    }

    #[test]
    fn charged_is_compact() {
        let e = Event::Charged {
            inode: 123_456,
            size: 8 << 20,
            heap: "system".into(),
            pid: 12_345,
            // Ten days after boot at 100 ticks a second.
            start: 86_400_000,
            cgroup: "/uid_10001/pid_12345".into(),
        };
        let mut p = Vec::new();
        encode(&e, &mut p);
        assert!(p.len() <= 44, "{} bytes", p.len());
        assert_eq!(decode(&p, VERSION), Ok(e));
    }

    #[test]
    fn version_1_records_decode_with_an_unknown_start_time() {
        // CHARGED of format 1: inode 7, size 4096, heap "system", pid 42, cgroup "/a".
        let v1 = [CHARGED, 7, 0x80, 0x20, 6, b's', b'y', b's', b't', b'e', b'm', 42, 2, b'/', b'a'];
        let e = Event::Charged { inode: 7, size: 4096, heap: "system".into(), pid: 42, start: 0, cgroup: "/a".into() };
        assert_eq!(decode(&v1, 1), Ok(e));
        assert!(decode(&v1, VERSION).is_err(), "format 2 reads a start time where format 1 has the cgroup");
        let v1 = [TRANSFERRED, 7, 43, 2, b'/', b'b'];
        assert_eq!(decode(&v1, 1), Ok(Event::Transferred { inode: 7, pid: 43, start: 0, cgroup: "/b".into() }));
    }

    proptest! {
        #[test]
        fn events_round_trip_through_the_binary_codec(e in event()) {
            let mut p = Vec::new();
            encode(&e, &mut p);
            prop_assert_eq!(decode(&p, VERSION), Ok(e));
        }

        #[test]
        fn any_bytes_decode_to_an_event_or_an_error(p in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(e) = decode(&p, VERSION) {
                let mut again = Vec::new();
                encode(&e, &mut again);
                prop_assert_eq!(decode(&again, VERSION), Ok(e));
            }
        }

        #[test]
        fn cut_events_never_decode(e in event(), cut in any::<prop::sample::Index>()) {
            let mut p = Vec::new();
            encode(&e, &mut p);
            let at = cut.index(p.len());
            prop_assert!(decode(&p[..at], VERSION).is_err());
        }
    }
}
