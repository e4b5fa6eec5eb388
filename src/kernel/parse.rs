//! Line parsers shared by the adapters. They take the file's bytes and its path (for errors),
//! never panic, and are strict: the kernel writes these files in one exact format, so anything
//! else is reported with the file, the 1-based line and what was wrong.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use super::error::KernelError;
use crate::ledger::UNLIMITED;

pub(crate) type Result<T> = std::result::Result<T, KernelError>;

/// A value parser: the string of one field to a number, or a reason.
pub(crate) type ValueParser = fn(&str) -> std::result::Result<u64, String>;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| KernelError::io(path, e))
}

/// The file as text; invalid UTF-8 is a parse error at the line where it starts.
pub(crate) fn text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        KernelError::parse(path, line, "invalid UTF-8")
    })
}

/// Lines with 1-based numbers. The newline ending the last line does not start another one, so
/// "" has no lines and "\n" has one empty line.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let empty = text.is_empty();
    body.split('\n').enumerate().filter(move |_| !empty).map(|(i, l)| (i + 1, l))
}

/// [`lines`] for files that need not be UTF-8 (/proc files that hold names).
pub(crate) fn byte_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|&b| b == b'\n').enumerate().filter(move |_| !empty).map(|(i, l)| (i + 1, l))
}

/// A decimal byte count, digits only (the kernel never prints signs or spaces).
pub(crate) fn number(s: &str) -> std::result::Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number {s:?}"));
    }
    s.parse::<u64>().map_err(|_| format!("number {s:?} out of range"))
}

/// A limit: bytes, or `max` for [`UNLIMITED`].
pub(crate) fn limit(s: &str) -> std::result::Result<u64, String> {
    if s == "max" {
        Ok(UNLIMITED)
    } else {
        number(s).map_err(|e| format!("{e}, expected bytes or \"max\""))
    }
}

/// How a limit is written: `max` or plain bytes (the kernel's memparse also takes K/M/G
/// suffixes, but plain bytes cannot be misread).
pub(crate) fn format_limit(value: u64) -> String {
    if value == UNLIMITED {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// Splits `<key> <value>` with nothing before or after.
fn key_value<'a>(path: &Path, n: usize, line: &'a str, key_name: &str) -> Result<(&'a str, &'a str)> {
    if line.trim().is_empty() {
        return Err(KernelError::parse(path, n, "empty line"));
    }
    if line.starts_with(char::is_whitespace) {
        return Err(KernelError::parse(path, n, format!("missing {key_name} before {:?}", line.trim())));
    }
    let mut fields = line.split_whitespace();
    let key = fields.next().unwrap_or_default();
    let Some(value) = fields.next() else {
        return Err(KernelError::parse(path, n, format!("missing value after {key_name} {key:?}")));
    };
    if let Some(junk) = fields.next() {
        return Err(KernelError::parse(path, n, format!("trailing junk {junk:?} after value {value:?}")));
    }
    Ok((key, value))
}

/// Files of `<key> <value>` lines: memory.stat, memory.events, dmem.*. An empty file is an empty
/// list (dmem files have no lines until a driver registers a region); a key may appear once.
pub(crate) fn keyed(path: &Path, bytes: &[u8], key_name: &str, value: ValueParser) -> Result<Vec<(String, u64)>> {
    let text = text(path, bytes)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (n, line) in lines(text) {
        let (key, raw) = key_value(path, n, line, key_name)?;
        let v = value(raw).map_err(|reason| KernelError::parse(path, n, format!("{key_name} {key:?}: {reason}")))?;
        if !seen.insert(key) {
            return Err(KernelError::parse(path, n, format!("duplicate {key_name} {key:?}")));
        }
        out.push((key.to_string(), v));
    }
    Ok(out)
}

/// A file holding exactly one value on one line: memory.current, memory.max, ...
pub(crate) fn single(path: &Path, bytes: &[u8], value: ValueParser) -> Result<u64> {
    let text = text(path, bytes)?;
    let mut it = lines(text);
    let Some((n, line)) = it.next() else {
        return Err(KernelError::parse(path, 1, "empty file, expected a value"));
    };
    if let Some((n, _)) = it.next() {
        return Err(KernelError::parse(path, n, "unexpected extra line"));
    }
    if line.is_empty() {
        return Err(KernelError::parse(path, n, "empty line, expected a value"));
    }
    if line.trim() != line {
        return Err(KernelError::parse(path, n, format!("unexpected whitespace in {line:?}")));
    }
    let mut fields = line.split_whitespace();
    let raw = fields.next().unwrap_or_default();
    if let Some(junk) = fields.next() {
        return Err(KernelError::parse(path, n, format!("trailing junk {junk:?} after value {raw:?}")));
    }
    value(raw).map_err(|reason| KernelError::parse(path, n, reason))
}

/// Whitespace-separated words on at most one line: cgroup.controllers, cgroup.subtree_control.
pub(crate) fn words(path: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let text = text(path, bytes)?;
    let mut out = Vec::new();
    for (n, line) in lines(text) {
        if n > 1 {
            return Err(KernelError::parse(path, n, "unexpected extra line"));
        }
        out.extend(line.split_whitespace().map(str::to_string));
    }
    Ok(out)
}

/// One-line-per-entry numbers: cgroup.procs.
pub(crate) fn pid_lines(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    let text = text(path, bytes)?;
    lines(text)
        .map(|(n, line)| {
            let pid = number(line).map_err(|r| KernelError::parse(path, n, r))?;
            u32::try_from(pid).map_err(|_| KernelError::parse(path, n, format!("pid {pid} out of range")))
        })
        .collect()
}

/// ENOENT as `None`, other errors as errors: for optional files (memory.peak on older kernels).
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KernelError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(e: KernelError) -> (usize, String) {
        match e {
            KernelError::Parse { line, reason, .. } => (line, reason),
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn lines_do_not_count_the_final_newline() {
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\n").collect::<Vec<_>>(), vec![(1, "")]);
        assert_eq!(lines("a\nb").collect::<Vec<_>>(), vec![(1, "a"), (2, "b")]);
        assert_eq!(lines("a\nb\n").collect::<Vec<_>>(), vec![(1, "a"), (2, "b")]);
    }

    #[test]
    fn numbers_reject_signs_spaces_and_overflow() {
        assert_eq!(number("4096"), Ok(4096));
        assert!(number("+1").is_err());
        assert!(number("-1").is_err());
        assert!(number("").is_err());
        assert!(number("1K").is_err());
        assert!(number("18446744073709551616").unwrap_err().contains("out of range"));
        assert_eq!(limit("max"), Ok(UNLIMITED));
        assert!(limit("MAX").is_err());
    }

    #[test]
    fn single_value_files_must_hold_one_value() {
        let p = Path::new("memory.max");
        assert_eq!(single(p, b"max\n", limit).unwrap(), UNLIMITED);
        assert_eq!(single(p, b"4096", limit).unwrap(), 4096);
        assert_eq!(line_of(single(p, b"", limit).unwrap_err()).0, 1);
        assert_eq!(line_of(single(p, b"1\n2\n", limit).unwrap_err()).0, 2);
        assert!(line_of(single(p, b"1 2\n", limit).unwrap_err()).1.contains("trailing junk"));
        assert!(line_of(single(p, b"12ab\n", limit).unwrap_err()).1.contains("\"12ab\""));
        assert!(line_of(single(p, b" 1\n", limit).unwrap_err()).1.contains("whitespace"));
    }

    #[test]
    fn invalid_utf8_is_reported_at_its_line() {
        let e = keyed(Path::new("f"), b"a 1\nb \xff\n", "key", number).unwrap_err();
        assert_eq!(line_of(e), (2, "invalid UTF-8".to_string()));
    }

    #[test]
    fn controllers_are_one_line_of_words() {
        let p = Path::new("cgroup.controllers");
        assert_eq!(words(p, b"cpu memory dmem\n").unwrap(), ["cpu", "memory", "dmem"]);
        assert!(words(p, b"\n").unwrap().is_empty());
        assert!(words(p, b"").unwrap().is_empty());
        assert_eq!(line_of(words(p, b"cpu\nmemory\n").unwrap_err()).0, 2);
    }

    #[test]
    fn pid_lists_parse_each_line() {
        let p = Path::new("cgroup.procs");
        assert_eq!(pid_lines(p, b"1\n23\n").unwrap(), [1, 23]);
        assert!(pid_lines(p, b"").unwrap().is_empty());
        assert_eq!(line_of(pid_lines(p, b"1\nx\n").unwrap_err()).0, 2);
        assert_eq!(line_of(pid_lines(p, b"1\n\n3\n").unwrap_err()).0, 2);
        assert!(line_of(pid_lines(p, b"4294967296\n").unwrap_err()).1.contains("out of range"));
    }

    #[test]
    fn limits_are_written_as_max_or_plain_bytes() {
        assert_eq!(format_limit(UNLIMITED), "max");
        assert_eq!(format_limit(0), "0");
        assert_eq!(format_limit(1 << 30), "1073741824");
    }
}
