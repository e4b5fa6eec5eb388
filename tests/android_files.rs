//! The Android build files agree with each other and with the code.
//!
//! Soong, init, VINTF and SELinux are not available where this project is developed, so these
//! tests read the files as text: Android.bp (top level, aidl/, vts/), the init .rc, the VINTF
//! fragment, sepolicy/, the frozen AIDL dumps, build.rs and the Rust source. Parsing is
//! deliberately small: a Blueprint reader, line-based .rc and contexts files, tag lookups in XML.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PACKAGE: &str = "vendor.chargetransfer";
const SERVICE_MODULE: &str = "vendor.chargetransfer-service";
const CLI_MODULE: &str = "chargectl";
const LIB_MODULE: &str = "libchargetransfer";
const VTS_MODULE: &str = "VtsHalChargeTransferTargetTest";
const POLICY_MODULE: &str = "chargetransfer_policy.json";
const RC: &str = "vendor.chargetransfer-service.rc";
const VINTF: &str = "vendor.chargetransfer-service.xml";
const MEMTRACK_VINTF: &str = "android.hardware.memtrack-chargetransfer.xml";
const MEMTRACK_PACKAGE: &str = "android.hardware.memtrack";
/// AOSP's frozen memtrack version, the one the copy under aidl/ is and build.rs stamps.
const MEMTRACK_VERSION: u32 = 1;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Blueprint (Android.bp)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    fn str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn strs(&self) -> Vec<String> {
        match self {
            Value::List(items) => items.iter().filter_map(|v| v.str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Module {
    kind: String,
    props: Value,
}

impl Module {
    fn name(&self) -> &str {
        self.props.get("name").and_then(Value::str).unwrap_or("")
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.props.get(key)
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::str)
    }
    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::bool)
    }
    fn strs(&self, key: &str) -> Vec<String> {
        self.get(key).map(Value::strs).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Punct(char),
}

fn tokenize(src: &str) -> Vec<Tok> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str(s));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            toks.push(Tok::Int(text.parse().expect("integer")));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    file: String,
}

impl Parser {
    fn next(&mut self) -> Tok {
        let t = self.toks.get(self.pos).cloned().unwrap_or_else(|| panic!("{}: unexpected end", self.file));
        self.pos += 1;
        t
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn expect(&mut self, c: char) {
        let t = self.next();
        assert_eq!(t, Tok::Punct(c), "{}: expected `{c}`", self.file);
    }
    fn value(&mut self) -> Value {
        let v = match self.next() {
            Tok::Str(s) => Value::Str(s),
            Tok::Int(n) => Value::Int(n),
            Tok::Ident(id) if id == "true" => Value::Bool(true),
            Tok::Ident(id) if id == "false" => Value::Bool(false),
            Tok::Punct('[') => {
                let mut items = Vec::new();
                while self.peek() != Some(&Tok::Punct(']')) {
                    items.push(self.value());
                    if self.peek() == Some(&Tok::Punct(',')) {
                        self.pos += 1;
                    }
                }
                self.expect(']');
                Value::List(items)
            }
            Tok::Punct('{') => self.map_body(),
            t => panic!("{}: unexpected {t:?} (variables are not supported here)", self.file),
        };
        // String and list concatenation with `+` is not used in this project's files.
        assert_ne!(self.peek(), Some(&Tok::Punct('+')), "{}: `+` is not supported here", self.file);
        v
    }
    /// After `{`: `key: value,` pairs up to `}`.
    fn map_body(&mut self) -> Value {
        let mut map = BTreeMap::new();
        loop {
            match self.next() {
                Tok::Punct('}') => break,
                Tok::Ident(key) => {
                    self.expect(':');
                    let v = self.value();
                    assert!(map.insert(key.clone(), v).is_none(), "{}: `{key}` set twice", self.file);
                    if self.peek() == Some(&Tok::Punct(',')) {
                        self.pos += 1;
                    }
                }
                t => panic!("{}: unexpected {t:?} in a property map", self.file),
            }
        }
        Value::Map(map)
    }
}

fn blueprint(rel: &str) -> Vec<Module> {
    let mut p = Parser { toks: tokenize(&read(rel)), pos: 0, file: rel.to_string() };
    let mut modules = Vec::new();
    while p.peek().is_some() {
        let kind = match p.next() {
            Tok::Ident(k) => k,
            t => panic!("{rel}: expected a module type, got {t:?}"),
        };
        assert_ne!(p.peek(), Some(&Tok::Punct('=')), "{rel}: variable assignments are not supported here");
        p.expect('{');
        modules.push(Module { kind, props: p.map_body() });
    }
    modules
}

fn all_modules() -> Vec<(String, Module)> {
    let mut out = Vec::new();
    for file in ["Android.bp", "aidl/Android.bp", "vts/Android.bp"] {
        for m in blueprint(file) {
            out.push((file.to_string(), m));
        }
    }
    out
}

/// The module named `name`, with the directory of its Android.bp (relative to the crate root).
fn module(name: &str) -> (PathBuf, Module) {
    let found: Vec<_> = all_modules().into_iter().filter(|(_, m)| m.name() == name).collect();
    assert_eq!(found.len(), 1, "expected exactly one module named {name}, found {}", found.len());
    let (file, m) = found.into_iter().next().unwrap();
    let dir = Path::new(&file).parent().unwrap().to_path_buf();
    (dir, m)
}

/// Where Soong installs a vendor binary: /vendor/bin[/relative_install_path]/<module name>.
fn vendor_binary_path(m: &Module) -> String {
    assert_eq!(m.bool("vendor"), Some(true), "{} must be a vendor module", m.name());
    match m.str("relative_install_path") {
        Some(rel) => format!("/vendor/bin/{rel}/{}", m.name()),
        None => format!("/vendor/bin/{}", m.name()),
    }
}

// ---------------------------------------------------------------------------------------------
// init .rc
// ---------------------------------------------------------------------------------------------

/// A section of an init script: `service <name> <path> <args...>` or `on <trigger>`, with its
/// indented lines (options or commands), each split into words.
#[derive(Debug)]
struct Section {
    header: Vec<String>,
    lines: Vec<Vec<String>>,
}

fn rc_sections() -> Vec<Section> {
    let text = read(RC);
    let mut sections: Vec<Section> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(!line.ends_with('\\'), "{RC}: keep commands on one line");
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if words[0] == "service" || words[0] == "on" || words[0] == "import" {
            sections.push(Section { header: words, lines: Vec::new() });
        } else {
            sections.last_mut().unwrap_or_else(|| panic!("{RC}: `{line}` outside a section")).lines.push(words);
        }
    }
    sections
}

fn rc_service() -> Section {
    let mut services: Vec<Section> = rc_sections().into_iter().filter(|s| s.header[0] == "service").collect();
    assert_eq!(services.len(), 1, "{RC} must define exactly one service");
    services.pop().unwrap()
}

/// The values of `--flag VALUE` (every occurrence) in a command line.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// VINTF, AIDL, code
// ---------------------------------------------------------------------------------------------

/// Text of every `<tag>...</tag>` in `xml`, comments removed.
fn xml_tags(xml: &str, tag: &str) -> Vec<String> {
    let mut text = xml.to_string();
    while let Some(start) = text.find("<!--") {
        let end = text[start..].find("-->").map(|e| start + e + 3).expect("unterminated XML comment");
        text.replace_range(start..end, "");
    }
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(s) = rest.find(&open) {
        let after = &rest[s + open.len()..];
        let e = after.find(&close).unwrap_or_else(|| panic!("unterminated <{tag}>"));
        out.push(after[..e].trim().to_string());
        rest = &after[e + close.len()..];
    }
    out
}

fn vintf() -> String {
    read(VINTF)
}

/// The instance the VINTF fragment declares: `<name>.<fqname>`.
fn vintf_instances() -> Vec<String> {
    let xml = vintf();
    let names = xml_tags(&xml, "name");
    assert_eq!(names.len(), 1, "{VINTF}: expected one <hal> with one <name>");
    xml_tags(&xml, "fqname").iter().map(|fq| format!("{}.{fq}", names[0])).collect()
}

/// `pub const INSTANCE: &str = "...";` in src/service/mod.rs, which the service registers.
fn rust_instance() -> String {
    let src = read("src/service/mod.rs");
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with("pub const INSTANCE: &str"))
        .expect("src/service/mod.rs: no `pub const INSTANCE: &str = \"...\";`");
    line.split('"').nth(1).expect("INSTANCE is a string literal").to_string()
}

/// `const VERSION: i32 = N;` in build.rs, the version the Cargo build stamps into the stubs.
fn build_rs_version() -> u32 {
    let src = read("build.rs");
    let line = src.lines().find(|l| l.trim_start().starts_with("const VERSION")).expect("build.rs: no `const VERSION`");
    let value = line.split('=').nth(1).expect("VERSION has a value");
    value.trim().trim_end_matches(';').trim().parse().expect("VERSION is an integer")
}

fn api_dir() -> PathBuf {
    root().join("aidl/aidl_api").join(PACKAGE)
}

fn frozen_versions() -> Vec<u32> {
    let mut versions: Vec<u32> = fs::read_dir(api_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", api_dir().display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    assert!(!versions.is_empty(), "no frozen versions under {}", api_dir().display());
    versions
}

fn latest_frozen() -> u32 {
    *frozen_versions().last().unwrap()
}

/// The .aidl files under `dir`, as `./relative/path` in byte order (what `find ./ | LC_ALL=C sort`
/// produces), with their contents.
fn aidl_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "aidl") {
                let rel = path.strip_prefix(base).unwrap().to_str().unwrap().to_string();
                out.insert(format!("./{rel}"), fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn sources() -> BTreeMap<String, Vec<u8>> {
    aidl_files(&root().join("aidl")).into_iter().filter(|(k, _)| k.starts_with("./vendor/")).collect()
}

fn sha1sum(input: &[u8], args: &[String], dir: &Path) -> String {
    use std::io::Write;
    let mut child = Command::new("sha1sum")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha1sum (coreutils) must be installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha1sum failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The hash Soong verifies for frozen version `version` in `dir` (system/tools/aidl
/// build/aidl_api.go, aidlVerifyHashRule + versionForHashGen):
/// `cd dir && { find ./ -name "*.aidl" -print0 | LC_ALL=C sort -z | xargs -0 sha1sum && echo V; }
/// | sha1sum`, where V is the *previous* version, or the literal `latest-version` for version 1.
fn soong_hash(dir: &Path, version: u32) -> String {
    let files: Vec<String> = aidl_files(dir).into_keys().collect();
    let mut listing = sha1sum(&[], &files, dir);
    let v = if version > 1 { (version - 1).to_string() } else { "latest-version".to_string() };
    listing.push_str(&v);
    listing.push('\n');
    sha1sum(listing.as_bytes(), &[], dir).split_whitespace().next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// sepolicy
// ---------------------------------------------------------------------------------------------

fn sepolicy_files() -> Vec<(String, String)> {
    let dir = root().join("sepolicy");
    let mut out: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_string(), fs::read_to_string(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// Policy statements of the .te files and `attributes`, comments removed.
fn te_text() -> String {
    sepolicy_files()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".te") || name == "attributes")
        .flat_map(|(_, text)| text.lines().map(|l| l.split('#').next().unwrap().to_string()).collect::<Vec<_>>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Types declared with `type NAME[, attr...];` (one declaration per line).
fn declared_types() -> BTreeMap<String, BTreeSet<String>> {
    let mut types = BTreeMap::new();
    for line in te_text().lines() {
        if let Some(rest) = line.trim().strip_prefix("type ") {
            let decl = rest.split(';').next().unwrap();
            let mut parts = decl.split(',').map(str::trim);
            let name = parts.next().unwrap().to_string();
            types.insert(name, parts.map(str::to_string).collect());
        }
    }
    types
}

/// `(pattern or service name, type)` of a contexts file; labels are `u:object_r:TYPE:s0`.
fn contexts(file: &str) -> Vec<(String, String)> {
    read(&format!("sepolicy/{file}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let label = words.last().unwrap();
            let fields: Vec<&str> = label.split(':').collect();
            assert!(
                fields.len() == 4 && fields[0] == "u" && fields[1] == "object_r" && fields[3] == "s0",
                "{file}: bad label {label}"
            );
            (words[0].to_string(), fields[2].to_string())
        })
        .collect()
}

/// Whether a file_contexts pattern matches `path`. Handles the subset these files use: `\.`,
/// `\-`, one `(a|b)` alternation group, and a trailing `(/.*)?`; anything else fails the test.
fn fc_matches(pattern: &str, path: &str) -> bool {
    let (pattern, subtree) = match pattern.strip_suffix("(/.*)?") {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let alternatives: Vec<String> = match (pattern.find('('), pattern.find(')')) {
        (Some(open), Some(close)) if open < close => pattern[open + 1..close]
            .split('|')
            .map(|alt| format!("{}{alt}{}", &pattern[..open], &pattern[close + 1..]))
            .collect(),
        _ => vec![pattern.to_string()],
    };
    alternatives.iter().any(|alt| {
        let mut prev = ' ';
        for c in alt.chars() {
            assert!(c != '.' || prev == '\\', "unescaped `.` in file_contexts pattern {pattern}");
            prev = c;
        }
        let literal = alt.replace("\\.", ".").replace("\\-", "-");
        assert!(
            !literal.contains(['(', ')', '|', '*', '?', '+', '[', '\\', '^', '$']),
            "file_contexts pattern too rich for this test: {pattern}"
        );
        path == literal || (subtree && path.starts_with(&format!("{literal}/")))
    })
}

/// The type file_contexts gives `path`.
fn fc_type(path: &str) -> Option<String> {
    // As in libselinux, the last matching entry wins.
    contexts("file_contexts").into_iter().rev().find(|(p, _)| fc_matches(p, path)).map(|(_, t)| t)
}

// =============================================================================================
// The checks
// =============================================================================================

#[test]
fn vintf_instance_is_the_instance_the_service_registers() {
    assert_eq!(vintf_instances(), vec![rust_instance()], "{VINTF} vs chargetransfer::service::INSTANCE");
}

/// `pub const MEMTRACK_INSTANCE: &str = "...";` in src/service/memtrack.rs.
fn rust_memtrack_instance() -> String {
    let src = read("src/service/memtrack.rs");
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with("pub const MEMTRACK_INSTANCE: &str"))
        .expect("src/service/memtrack.rs: no `pub const MEMTRACK_INSTANCE: &str = \"...\";`");
    line.split('"').nth(1).expect("MEMTRACK_INSTANCE is a string literal").to_string()
}

#[test]
fn memtrack_fragment_declares_the_instance_the_service_registers_at_aosps_frozen_version() {
    let xml = read(MEMTRACK_VINTF);
    assert!(xml.contains("<manifest version=\"1.0\" type=\"device\">"), "{MEMTRACK_VINTF}: a device manifest");
    let names = xml_tags(&xml, "name");
    assert_eq!(names, vec![MEMTRACK_PACKAGE.to_string()], "{MEMTRACK_VINTF}: one HAL");
    let declared: Vec<String> = xml_tags(&xml, "fqname").iter().map(|fq| format!("{}.{fq}", names[0])).collect();
    assert_eq!(declared, vec![rust_memtrack_instance()], "{MEMTRACK_VINTF} vs service::MEMTRACK_INSTANCE");
    assert_eq!(xml_tags(&xml, "version"), vec![MEMTRACK_VERSION.to_string()]);
    assert!(read("build.rs").contains(".version(1)"), "build.rs stamps memtrack's version");
}

#[test]
fn memtrack_aidl_is_aosps_frozen_version_byte_for_byte() {
    // The copy under aidl/android/hardware/memtrack is AOSP's hardware/interfaces/memtrack/aidl;
    // its frozen dump must hash to AOSP's .hash (so the Cargo build serves what AOSP's stubs do).
    let frozen = root().join(format!("aidl/aidl_api/{MEMTRACK_PACKAGE}/{MEMTRACK_VERSION}"));
    let hash = fs::read_to_string(frozen.join(".hash")).unwrap();
    assert_eq!(hash.trim(), "25438132a462bf5b6f4334d966c95b70824e66c0", "AOSP's hash of android.hardware.memtrack V1");
    assert_eq!(soong_hash(&frozen, MEMTRACK_VERSION), hash.trim(), "the frozen copy is not AOSP's");
    let sources = aidl_files(&root().join("aidl/android/hardware/memtrack"));
    let names: Vec<&str> = sources.keys().map(String::as_str).collect();
    assert_eq!(names, ["./DeviceInfo.aidl", "./IMemtrack.aidl", "./MemtrackRecord.aidl", "./MemtrackType.aidl"]);
    for (file, text) in &sources {
        let text = String::from_utf8_lossy(text);
        assert!(text.contains("package android.hardware.memtrack;"), "{file}");
    }
    assert!(
        te_text()
            .split_whitespace()
            .collect::<String>()
            .contains("hal_server_domain(hal_vendor_chargetransfer_default,hal_memtrack)"),
        "sepolicy: the service must be a hal_memtrack server to add IMemtrack/default"
    );
}

#[test]
fn service_contexts_labels_the_registered_instance_as_the_hal_service() {
    let entries = contexts("service_contexts");
    assert_eq!(
        entries,
        vec![(rust_instance(), "hal_vendor_chargetransfer_service".to_string())],
        "sepolicy/service_contexts vs chargetransfer::service::INSTANCE"
    );
}

#[test]
fn vintf_hal_name_is_the_aidl_interface_and_package() {
    let xml = vintf();
    assert!(xml.contains("<manifest version=\"1.0\" type=\"device\">"), "{VINTF} must be a device manifest");
    assert!(xml.contains("<hal format=\"aidl\">"), "{VINTF} must declare an AIDL HAL");
    assert_eq!(xml_tags(&xml, "name"), vec![PACKAGE.to_string()]);
    let (_, iface) = module(PACKAGE);
    assert_eq!(iface.kind, "aidl_interface");
    // The fqname's interface is a real interface of the package, and every file is in the package.
    let fq = xml_tags(&xml, "fqname");
    let interface = fq[0].split('/').next().unwrap();
    let sources = sources();
    assert!(
        sources.contains_key(&format!("./{}/{interface}.aidl", PACKAGE.replace('.', "/"))),
        "{VINTF}: {interface} is not an .aidl file of {PACKAGE}"
    );
    for (file, text) in &sources {
        let text = String::from_utf8_lossy(text);
        assert!(text.contains(&format!("package {PACKAGE};")), "{file} is not in package {PACKAGE}");
    }
}

#[test]
fn vintf_version_is_the_latest_frozen_version_and_the_build_rs_version() {
    let versions: Vec<u32> =
        xml_tags(&vintf(), "version").iter().map(|v| v.parse().expect("numeric <version>")).collect();
    assert_eq!(versions, vec![latest_frozen()], "{VINTF} <version> vs the newest dir under aidl/aidl_api/{PACKAGE}");
    assert_eq!(build_rs_version(), latest_frozen(), "build.rs VERSION vs the newest frozen version");
}

#[test]
fn aidl_interface_lists_exactly_the_frozen_versions() {
    let (dir, iface) = module(PACKAGE);
    assert_eq!(dir, Path::new("aidl"), "the aidl_interface must live next to aidl_api/ (aidl/Android.bp)");
    let listed: Vec<u32> = match iface.get("versions_with_info") {
        Some(Value::List(items)) => items
            .iter()
            .map(|v| v.get("version").and_then(Value::str).expect("version: \"N\"").parse().unwrap())
            .collect(),
        _ => panic!("aidl_interface needs versions_with_info"),
    };
    assert_eq!(listed, frozen_versions(), "versions_with_info vs the dirs under aidl/aidl_api/{PACKAGE}");
    assert_eq!(iface.bool("frozen"), Some(true), "the latest version is frozen and the sources equal it");
}

#[test]
fn aidl_interface_is_vintf_stable_with_rust_and_ndk_backends() {
    let (_, iface) = module(PACKAGE);
    assert!(iface.str("owner").is_some_and(|o| !o.is_empty()), "aidl_interface needs `owner` inside a soong_namespace");
    assert_eq!(iface.str("stability"), Some("vintf"));
    assert_eq!(iface.bool("vendor_available"), Some(true));
    assert_eq!(iface.strs("srcs"), vec![format!("{}/*.aidl", PACKAGE.replace('.', "/"))]);
    let backend = iface.get("backend").expect("backend");
    let enabled = |b: &str| backend.get(b).and_then(|v| v.get("enabled")).and_then(Value::bool);
    assert_eq!(enabled("rust"), Some(true), "rust backend (the service, chargectl, VTS)");
    assert_eq!(enabled("ndk"), Some(true), "ndk backend (a C++ gralloc allocator)");
    assert_eq!(enabled("java"), Some(false));
    assert_eq!(enabled("cpp"), Some(false));
}

#[test]
fn every_aidl_parcelable_and_interface_is_vintf_stability() {
    for (file, text) in sources() {
        let text = String::from_utf8(text).unwrap();
        let decl = text
            .lines()
            .map(str::trim)
            .position(|l| ["parcelable ", "interface ", "union ", "enum "].iter().any(|k| l.starts_with(k)))
            .unwrap_or_else(|| panic!("{file}: no declaration"));
        if text.lines().map(str::trim).nth(decl).unwrap().starts_with("enum ") {
            continue; // enums carry no stability
        }
        let before: Vec<&str> = text.lines().map(str::trim).take(decl).collect();
        let annotations: Vec<&str> = before.iter().rev().take_while(|l| l.starts_with('@')).copied().collect();
        assert!(
            annotations.contains(&"@VintfStability"),
            "{file}: a vintf-stable interface needs @VintfStability on every type"
        );
    }
}

/// What aidl/dumpapi.py (the `aidl --dumpapi` form) writes for the sources in aidl/vendor.
fn generated_dump() -> BTreeMap<String, Vec<u8>> {
    // One directory per call: tests run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("aidl-dump-{}-{call}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let files: Vec<PathBuf> = sources().keys().map(|rel| root().join("aidl").join(rel)).collect();
    let status = Command::new("python3")
        .arg(root().join("aidl/dumpapi.py"))
        .arg(&out)
        .args(&files)
        .status()
        .expect("python3 must be installed to run aidl/dumpapi.py");
    assert!(status.success(), "aidl/dumpapi.py failed");
    let dump = aidl_files(&out);
    fs::remove_dir_all(&out).unwrap();
    dump
}

#[test]
fn latest_frozen_dump_is_the_generated_dump_of_the_sources() {
    // `frozen: true` means the sources equal the latest version; Soong checks that by dumping the
    // sources and comparing with aidl_api/<name>/<N>.
    let frozen = aidl_files(&api_dir().join(latest_frozen().to_string()));
    let generated = generated_dump();
    assert_eq!(
        frozen.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "frozen version {} and the dump of aidl/vendor hold different files (unfrozen change?)",
        latest_frozen()
    );
    for (file, text) in &generated {
        assert!(
            frozen[file] == *text,
            "{file}: frozen version {} is not the dump of the sources (unfrozen change, or a hand edit; \
             re-run aidl/freeze.sh only for a new version)",
            latest_frozen()
        );
    }
}

#[test]
fn api_dumps_are_in_the_form_aidl_dumpapi_writes() {
    // Byte-level shape of every dump, independent of the generator: the banner, the package line
    // right after it, no comments or imports, two-space members, type names of this package
    // fully qualified.
    for version in frozen_versions().iter().map(u32::to_string).chain(["current".to_string()]) {
        for (file, text) in aidl_files(&api_dir().join(&version)) {
            let text = String::from_utf8(text).unwrap();
            let where_ = format!("aidl_api/{PACKAGE}/{version}/{file}");
            assert!(
                text.starts_with("///////////////////////////////////////////////////////////////////////////////\n// THIS FILE IS IMMUTABLE. DO NOT EDIT IN ANY CASE."),
                "{where_}: no dumpapi banner"
            );
            let body = text.split_once("Mainline modules.\n\n").unwrap_or_else(|| panic!("{where_}: banner")).1;
            assert!(body.starts_with(&format!("package {PACKAGE};\n")), "{where_}: package line after the banner");
            for line in body.lines().skip(1) {
                assert!(!line.contains("//") && !line.contains("/**"), "{where_}: comments are dropped: {line}");
                assert!(!line.starts_with("import "), "{where_}: imports are dropped");
                let indent = line.len() - line.trim_start().len();
                assert!(indent % 2 == 0 && !line.starts_with('\t'), "{where_}: two-space indentation: {line:?}");
            }
            for name in sources().keys().filter_map(|k| k.rsplit('/').next()?.strip_suffix(".aidl")) {
                for line in body.lines().skip(1).filter(|l| l.starts_with("  ")) {
                    let bare = line.split(|c: char| !c.is_alphanumeric() && c != '.').any(|w| w == name);
                    assert!(!bare, "{where_}: `{name}` must be written {PACKAGE}.{name}: {line}");
                }
            }
        }
    }
}

#[test]
fn frozen_hashes_are_the_ones_soong_recomputes() {
    for version in frozen_versions() {
        let dir = api_dir().join(version.to_string());
        let hash_file = read(&format!("aidl/aidl_api/{PACKAGE}/{version}/.hash"));
        // Soong compares the last line (older hashes may stay above it).
        let recorded = hash_file.lines().next_back().unwrap_or("").trim().to_string();
        let expected = soong_hash(&dir, version);
        if recorded != expected {
            let v = version.to_string();
            let with_own_version = {
                let files: Vec<String> = aidl_files(&dir).into_keys().collect();
                let listing = sha1sum(&[], &files, &dir) + &v + "\n";
                sha1sum(listing.as_bytes(), &[], &dir).split_whitespace().next().unwrap().to_string()
            };
            let hint = if recorded == with_own_version {
                format!(
                    " The recorded hash was made with `echo {v}`; Soong's hash for version N ends with \
                     the previous version, or `latest-version` for N = 1 (versionForHashGen in \
                     system/tools/aidl/build/aidl_api.go). Fix aidl/freeze.sh and re-freeze."
                )
            } else {
                String::new()
            };
            panic!("aidl_api/{PACKAGE}/{version}/.hash is {recorded}, Soong computes {expected}.{hint}");
        }
    }
}

#[test]
fn build_rs_serves_the_hash_soong_would_serve() {
    // Soong stamps the generated stubs with the last line of .hash; build.rs reads the whole file.
    let hash_file = read(&format!("aidl/aidl_api/{PACKAGE}/{}/.hash", build_rs_version()));
    assert_eq!(
        hash_file.trim().lines().count(),
        1,
        ".hash must hold one line, or build.rs would serve more than the hash"
    );
    let hash = hash_file.trim();
    assert!(hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()), ".hash is not a sha1: {hash}");
    assert!(read("build.rs").contains(&format!("aidl/aidl_api/{PACKAGE}/")), "build.rs must read the frozen .hash");
}

#[test]
fn current_api_dump_is_the_generated_dump_of_the_sources() {
    // Every backend's source generation depends on the interface's API checks, and with no
    // aidl_api/<name>/current the check is a rule that always fails ("API dump for the current
    // version of AIDL interface ... does not exist", aidl_api.go). `m <name>-update-api` writes it.
    let current_dir = api_dir().join("current");
    assert!(current_dir.is_dir(), "{} is missing: Soong fails the build without it", current_dir.display());
    assert_eq!(
        aidl_files(&current_dir),
        generated_dump(),
        "aidl_api/{PACKAGE}/current vs aidl/dumpapi.py (aidl/freeze.sh)"
    );
}

#[test]
fn rc_service_starts_the_installed_service_binary() {
    let svc = rc_service();
    let (_, m) = module(SERVICE_MODULE);
    assert_eq!(m.kind, "rust_binary");
    assert_eq!(m.str("relative_install_path"), Some("hw"));
    assert_eq!(svc.header[1], "vendor.chargetransfer", "init service name");
    assert_eq!(svc.header[2], vendor_binary_path(&m), "{RC} binary vs Android.bp module name + relative_install_path");
    assert_eq!(svc.header[2], format!("/vendor/bin/hw/{SERVICE_MODULE}"));
}

#[test]
fn rc_service_runs_as_a_system_hal_without_capabilities() {
    let svc = rc_service();
    let option = |name: &str| svc.lines.iter().find(|l| l[0] == name).cloned();
    assert_eq!(option("class"), Some(vec!["class".into(), "hal".into()]));
    assert_eq!(option("user"), Some(vec!["user".into(), "system".into()]));
    let groups = option("group").expect("group");
    assert_eq!(groups[1], "system", "primary group");
    assert!(groups.contains(&"readproc".to_string()), "readproc: /proc is hidepid=2,gid=readproc");
    // CAP_SYS_PTRACE would need `capability sys_ptrace`, which system/sepolicy neverallows.
    assert_eq!(option("capabilities"), None, "no capabilities (see the comment in {RC})");
}

#[test]
fn rc_policy_paths_are_the_installed_policy_files() {
    let svc = rc_service();
    let policies = flag_values(&svc.header, "--policy");
    let (dir, etc) = module(POLICY_MODULE);
    assert_eq!(etc.kind, "prebuilt_etc");
    assert_eq!(etc.bool("vendor"), Some(true));
    let installed =
        format!("/vendor/etc/{}/{}", etc.str("sub_dir").expect("sub_dir"), etc.str("filename").expect("filename"));
    assert_eq!(policies.first(), Some(&installed), "first --policy vs prebuilt_etc sub_dir/filename");
    assert_eq!(
        policies.get(1).map(String::as_str),
        Some("/odm/etc/chargetransfer/policy.json"),
        "second --policy: the optional ODM override"
    );
    assert_eq!(policies.len(), 2);
    let src = root().join(dir).join(etc.str("src").expect("src"));
    let text = fs::read_to_string(&src).unwrap_or_else(|e| panic!("prebuilt_etc src {}: {e}", src.display()));
    serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", src.display()));
    let (_, svc_module) = module(SERVICE_MODULE);
    assert!(
        svc_module.strs("required").contains(&POLICY_MODULE.to_string()),
        "the service module must require {POLICY_MODULE}"
    );
}

#[test]
fn rc_policy_override_may_be_absent() {
    // The .rc always passes the ODM override; a device without one must still start the service.
    let policies = flag_values(&rc_service().header, "--policy");
    let (dir, etc) = module(POLICY_MODULE);
    let vendor = root().join(dir).join(etc.str("src").expect("src"));
    let missing = root().join("target/no-such-dir/odm/etc/chargetransfer/policy.json");
    assert!(!missing.exists());
    assert_eq!(policies.len(), 2, "vendor policy + ODM override");
    if let Err(e) = chargetransfer::policy::Policy::load(&[vendor, missing]) {
        panic!(
            "the .rc passes --policy {} on every device, but Policy::load fails when it does not exist: {e}",
            policies[1]
        );
    }
}

#[test]
fn rc_state_dir_is_created_for_system_and_labelled() {
    let sections = rc_sections();
    let svc = sections.iter().find(|s| s.header[0] == "service").unwrap();
    let state = flag_values(&svc.header, "--state-dir");
    assert_eq!(state.len(), 1, "one --state-dir");
    let state = &state[0];
    let post_fs_data =
        sections.iter().find(|s| s.header == ["on", "post-fs-data"]).expect("an `on post-fs-data` section");
    assert!(
        post_fs_data.lines.contains(&vec![
            "mkdir".into(),
            state.clone(),
            "0700".into(),
            "system".into(),
            "system".into()
        ]),
        "post-fs-data must `mkdir {state} 0700 system system`"
    );
    assert_eq!(fc_type(state).as_deref(), Some("vendor_chargetransfer_data_file"), "file_contexts label of {state}");
    assert_eq!(
        fc_type(&format!("{state}/journal")).as_deref(),
        Some("vendor_chargetransfer_data_file"),
        "files inside {state}"
    );
    let attrs = &declared_types()["vendor_chargetransfer_data_file"];
    assert!(attrs.contains("file_type") && attrs.contains("data_file_type"));
}

#[test]
fn rc_starts_the_service_before_gralloc_and_surfaceflinger() {
    // SurfaceFlinger (class core) and gralloc (class hal) start at `on boot`; post-fs-data comes
    // before it, and the service starts there once its state directory exists.
    let sections = rc_sections();
    let name = rc_service().header[1].clone();
    let post_fs_data = sections.iter().find(|s| s.header == ["on", "post-fs-data"]).expect("on post-fs-data");
    let start = post_fs_data.lines.iter().position(|l| *l == ["start".to_string(), name.clone()]);
    let mkdir = post_fs_data.lines.iter().position(|l| l[0] == "mkdir");
    assert!(start.is_some() && start > mkdir, "post-fs-data must `start {name}` after its mkdir");
}

#[test]
fn rc_autoconfig_runs_the_installed_chargectl() {
    let sections = rc_sections();
    let (_, cli) = module(CLI_MODULE);
    let path = vendor_binary_path(&cli);
    let execs: Vec<&Vec<String>> = sections
        .iter()
        .filter(|s| s.header[0] == "on")
        .flat_map(|s| s.lines.iter())
        .filter(|l| l[0] == "exec_background" || l[0] == "exec")
        .collect();
    assert_eq!(execs.len(), 1, "one exec of chargectl");
    let argv: Vec<&str> = execs[0].iter().skip_while(|w| *w != "--").skip(1).map(String::as_str).collect();
    assert_eq!(argv, vec![path.as_str(), "autoconfig"]);
    assert_eq!(
        &execs[0][1..4],
        &["-".to_string(), "system".into(), "system".into()],
        "default seclabel, user and group system"
    );
    // init refuses to exec a binary that does not transition out of init's domain.
    assert_eq!(fc_type(&path).as_deref(), Some("vendor_chargectl_exec"));
}

#[test]
fn android_bp_modules_build_the_cargo_targets() {
    let (_, lib) = module(LIB_MODULE);
    assert_eq!(lib.kind, "rust_library");
    assert_eq!(lib.str("crate_name"), Some("chargetransfer"), "Cargo package `chargetransfer`");
    assert_eq!(lib.strs("srcs"), vec!["src/lib.rs"]);
    assert_eq!(lib.bool("vendor_available"), Some(true));
    assert!(read("Cargo.toml").contains("name = \"chargetransfer\""));

    let (_, svc) = module(SERVICE_MODULE);
    assert_eq!(svc.str("crate_name"), Some("chargetransferd"), "Cargo bin `chargetransferd`");
    assert_eq!(svc.strs("srcs"), vec!["src/bin/chargetransferd.rs"]);
    assert_eq!(svc.strs("init_rc"), vec![RC]);
    assert_eq!(svc.strs("vintf_fragments"), vec![VINTF, MEMTRACK_VINTF]);
    assert!(svc.strs("required").contains(&CLI_MODULE.to_string()), "the .rc runs chargectl");

    let (_, cli) = module(CLI_MODULE);
    assert_eq!(cli.kind, "rust_binary");
    assert_eq!(cli.str("crate_name"), Some("chargectl"), "Cargo bin `chargectl`");
    assert_eq!(cli.strs("srcs"), vec!["src/bin/chargectl.rs"]);

    for (dir, m) in [module(LIB_MODULE), module(SERVICE_MODULE), module(CLI_MODULE), module(VTS_MODULE)] {
        for src in m.strs("srcs") {
            assert!(root().join(&dir).join(&src).is_file(), "{}: srcs {src} does not exist", m.name());
        }
    }
}

#[test]
fn rust_modules_use_the_latest_frozen_rust_backend() {
    let backend = format!("{PACKAGE}-V{}-rust", latest_frozen());
    let defaults: BTreeMap<String, Module> = all_modules()
        .into_iter()
        .filter(|(_, m)| m.kind == "rust_defaults")
        .map(|(_, m)| (m.name().to_string(), m))
        .collect();
    let libs_of = |m: &Module| -> Vec<String> {
        let mut libs = m.strs("rustlibs");
        for d in m.strs("defaults") {
            libs.extend(defaults.get(&d).unwrap_or_else(|| panic!("unknown defaults {d}")).strs("rustlibs"));
        }
        libs
    };
    for name in [LIB_MODULE, SERVICE_MODULE, CLI_MODULE, VTS_MODULE] {
        let (_, m) = module(name);
        let libs = libs_of(&m);
        for lib in &libs {
            if lib.starts_with(PACKAGE) {
                assert_eq!(lib, &backend, "{name} links {lib}, the frozen version is {}", latest_frozen());
            }
        }
        assert!(libs.contains(&backend), "{name} must link {backend}");
        if name != LIB_MODULE {
            assert!(libs.contains(&LIB_MODULE.to_string()), "{name} must link {LIB_MODULE}");
        }
    }
}

#[test]
fn vts_module_is_a_root_general_test_of_the_vts_crate() {
    let (dir, vts) = module(VTS_MODULE);
    assert_eq!(dir, Path::new("vts"));
    assert_eq!(vts.kind, "rust_test");
    assert_eq!(vts.strs("srcs"), vec!["src/main.rs"]);
    // `vts` carries AOSP interfaces; a vendor HAL's suite is general-tests (or a vendor suite).
    assert_eq!(vts.strs("test_suites"), vec!["general-tests"]);
    assert_eq!(vts.bool("require_root"), Some(true));
    assert!(vts.bool("auto_gen_config") == Some(true) || vts.str("test_config_template").is_some());
    // vts/src/main.rs is a Cargo bin with its own main (libtest-mimic): no libtest harness.
    assert!(read("vts/src/main.rs").contains("fn main("), "vts/src/main.rs has its own main");
    assert_eq!(vts.bool("test_harness"), Some(false));
}

#[test]
fn file_contexts_label_the_installed_binaries_with_exec_types_of_init_domains() {
    let te = te_text();
    let types = declared_types();
    for (module_name, exec_type) in
        [(SERVICE_MODULE, "hal_vendor_chargetransfer_default_exec"), (CLI_MODULE, "vendor_chargectl_exec")]
    {
        let (_, m) = module(module_name);
        let path = vendor_binary_path(&m);
        assert_eq!(fc_type(&path).as_deref(), Some(exec_type), "file_contexts label of {path}");
        let attrs = types.get(exec_type).unwrap_or_else(|| panic!("{exec_type} is not declared"));
        for a in ["exec_type", "vendor_file_type", "file_type"] {
            assert!(attrs.contains(a), "{exec_type} needs attribute {a}");
        }
        let domain = exec_type.strip_suffix("_exec").unwrap();
        assert!(types.get(domain).is_some_and(|a| a.contains("domain")), "type {domain}, domain; is missing");
        assert!(te.contains(&format!("init_daemon_domain({domain})")), "init_daemon_domain({domain}) is missing");
    }
}

#[test]
fn every_type_in_the_contexts_files_is_declared_in_the_te_files() {
    let types = declared_types();
    for file in ["file_contexts", "service_contexts"] {
        for (what, ty) in contexts(file) {
            assert!(types.contains_key(&ty), "{file}: {what} is labelled {ty}, which no sepolicy .te declares");
        }
    }
}

#[test]
fn sepolicy_declares_the_hal_server_and_its_service() {
    let te = te_text();
    let compact: String = te.split_whitespace().collect();
    for stmt in [
        "hal_attribute(vendor_chargetransfer)",
        "hal_server_domain(hal_vendor_chargetransfer_default,hal_vendor_chargetransfer)",
        "binder_call(hal_vendor_chargetransfer_client,hal_vendor_chargetransfer_server)",
        "hal_attribute_service(hal_vendor_chargetransfer,hal_vendor_chargetransfer_service)",
        "hal_client_domain(hal_graphics_allocator_default,hal_vendor_chargetransfer)",
        "hal_client_domain(vendor_chargectl,hal_vendor_chargetransfer)",
    ] {
        assert!(compact.contains(stmt), "sepolicy lacks {stmt}");
    }
    let attrs = &declared_types()["hal_vendor_chargetransfer_service"];
    for a in ["hal_service_type", "service_manager_type"] {
        assert!(attrs.contains(a), "hal_vendor_chargetransfer_service needs {a}");
    }
    // hal_attribute() belongs in `attributes`, as in AOSP.
    let attributes = sepolicy_files().into_iter().find(|(n, _)| n == "attributes").expect("sepolicy/attributes");
    assert!(attributes.1.contains("hal_attribute(vendor_chargetransfer)"));
}

#[test]
fn sepolicy_grants_nothing_system_sepolicy_neverallows() {
    // Platform neverallows these policy files would hit; keep them out of any rule.
    let te = te_text();
    for line in te.lines().map(str::trim) {
        let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if words.starts_with("allow ") {
            assert!(!words.contains("sys_ptrace"), "`{words}`: sys_ptrace is neverallowed for vendor domains");
            assert!(
                !(words.contains("cgroup_v2") && words.contains("create")),
                "`{words}`: creating cgroup_v2 files is neverallowed"
            );
            assert!(
                !words.starts_with("allow surfaceflinger "),
                "`{words}`: rules for platform domains belong in platform policy"
            );
        }
        let compact: String = line.split_whitespace().collect();
        assert!(
            !compact.contains("hal_client_domain(surfaceflinger"),
            "SurfaceFlinger is a platform domain: see hal_vendor_chargetransfer.te"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The binder seam
// ---------------------------------------------------------------------------------------------

/// The .rs files under `dir`, relative to the crate root.
fn rust_files(dir: &str) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(base).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root().join(dir), &mut out);
    out.sort();
    out
}

#[test]
fn only_the_binder_seam_names_rsbinder() {
    let naming: Vec<String> = rust_files("src").into_iter().filter(|f| read(f).contains("rsbinder")).collect();
    assert_eq!(naming, vec!["src/binder.rs"], "only src/binder.rs may name rsbinder; go through crate::binder");
    let vts: Vec<String> = rust_files("vts/src").into_iter().filter(|f| read(f).contains("rsbinder::")).collect();
    assert!(vts.is_empty(), "the VTS reaches binder through chargetransfer::binder, not rsbinder: {vts:?}");
}

/// Runs rustc (the toolchain running this test) with `args`; panics with its output on failure.
fn rustc(args: &[&str]) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out =
        Command::new(&rustc).args(["--edition", "2021", "--crate-type", "rlib", "--emit=metadata"]).args(args).output();
    let out = out.unwrap_or_else(|e| panic!("{rustc}: {e}"));
    assert!(out.status.success(), "rustc {}:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn binder_seam_compiles_against_libbinder_rs_under_cfg_soong() {
    // Soong builds src/binder.rs with `--cfg soong` against libbinder_rs and the generated
    // vendor_chargetransfer crate. With no Android tree here, tests/soong/ holds stand-ins with
    // their AOSP signatures; a seam that calls anything else, or calls it wrongly, fails here.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("soong-seam");
    fs::create_dir_all(&out).unwrap();
    let meta = |name: &str| out.join(format!("lib{name}.rmeta")).to_str().unwrap().to_string();
    let src = |rel: &str| root().join(rel).to_str().unwrap().to_string();
    let binder = format!("binder={}", meta("binder"));
    let generated = format!("vendor_chargetransfer={}", meta("vendor_chargetransfer"));
    let memtrack = format!("android_hardware_memtrack={}", meta("android_hardware_memtrack"));
    rustc(&["--crate-name", "binder", "-o", &meta("binder"), &src("tests/soong/libbinder_rs.rs")]);
    rustc(&[
        "--crate-name",
        "android_hardware_memtrack",
        "-o",
        &meta("android_hardware_memtrack"),
        "--extern",
        &binder,
        &src("tests/soong/android_hardware_memtrack.rs"),
    ]);
    rustc(&[
        "--crate-name",
        "vendor_chargetransfer",
        "-o",
        &meta("vendor_chargetransfer"),
        "--extern",
        &binder,
        &src("tests/soong/vendor_chargetransfer.rs"),
    ]);
    rustc(&[
        "--crate-name",
        "chargetransfer_binder",
        "--cfg",
        "soong",
        "-D",
        "warnings",
        "-o",
        &meta("seam"),
        "--extern",
        &binder,
        "--extern",
        &generated,
        "--extern",
        &memtrack,
        &src("src/binder.rs"),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Android.bp vs Cargo.toml
// ---------------------------------------------------------------------------------------------

/// The Soong modules for the dependencies Cargo.toml (`manifest`) builds on Android: the
/// `[dependencies]` that are not optional (optional ones belong to Cargo features, which Soong
/// does not enable) plus the android-only target dependencies, named as AOSP names crates
/// (`lib` + crate name; `log` is liblog_rust). rsbinder stands for libbinder_rs and the
/// generated `vendor.chargetransfer-V1-rust` (src/binder.rs).
fn soong_modules_for_cargo_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut section = String::new();
    for line in read(manifest).lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let on_android = section == "[dependencies]"
            || (section.contains("'cfg(target_os = \"android\")'") && section.ends_with(".dependencies]"));
        let Some((name, spec)) = line.split_once('=') else { continue };
        if !on_android || line.starts_with('#') || spec.contains("optional = true") {
            continue;
        }
        match name.trim() {
            "rsbinder" => modules.extend([
                "libbinder_rs".to_string(),
                format!("{PACKAGE}-V{}-rust", latest_frozen()),
                format!("{MEMTRACK_PACKAGE}-V{MEMTRACK_VERSION}-rust"),
            ]),
            "chargetransfer" => {
                modules.insert(LIB_MODULE.to_string());
            }
            "log" => {
                modules.insert("liblog_rust".to_string());
            }
            crate_name => {
                modules.insert(format!("lib{}", crate_name.replace('-', "_")));
            }
        }
    }
    modules
}

#[test]
fn android_bp_rustlibs_are_the_cargo_dependencies() {
    let defaults = module("chargetransfer_defaults").1;
    let (_, lib) = module(LIB_MODULE);
    let bp: BTreeSet<String> = defaults.strs("rustlibs").into_iter().chain(lib.strs("rustlibs")).collect();
    assert_eq!(bp, soong_modules_for_cargo_dependencies("Cargo.toml"), "Android.bp rustlibs vs Cargo.toml");
    // The generated crate is in the top-level list (for the VTS it is the client it tests through).
    let (_, vts) = module(VTS_MODULE);
    let mut vts_libs: BTreeSet<String> = vts.strs("rustlibs").into_iter().collect();
    assert!(
        vts_libs.remove(&format!("{PACKAGE}-V{}-rust", latest_frozen())),
        "the VTS tests through the -V1-rust client"
    );
    assert_eq!(
        vts_libs,
        soong_modules_for_cargo_dependencies("vts/Cargo.toml"),
        "vts/Android.bp rustlibs vs vts/Cargo.toml"
    );
    for (_, m) in all_modules() {
        assert!(
            m.get("features").is_none(),
            "{}: the Soong build enables no Cargo features (demo stays out)",
            m.name()
        );
    }
}

#[test]
fn demo_and_plotters_are_behind_the_default_demo_feature() {
    let cargo = read("Cargo.toml");
    assert!(cargo.contains("default = [\"demo\"]") && cargo.contains("demo = [\"dep:plotters\"]"));
    let plotters = cargo.lines().find(|l| l.starts_with("plotters")).expect("plotters dependency");
    assert!(plotters.contains("optional = true"), "plotters only with the demo feature");
    assert!(read("src/lib.rs").contains("#[cfg(feature = \"demo\")]\npub mod demo;"));
}

#[test]
fn every_include_str_is_in_compile_data() {
    let (_, lib) = module(LIB_MODULE);
    let data: BTreeSet<String> = lib.strs("compile_data").into_iter().collect();
    let mut included = BTreeSet::new();
    for file in rust_files("src") {
        let text = read(&file);
        for (i, _) in text.match_indices("include_str!(\"").chain(text.match_indices("include_bytes!(\"")) {
            let arg = text[i..].split('"').nth(1).unwrap();
            let mut path = Path::new(&file).parent().unwrap().to_path_buf();
            for part in Path::new(arg).components() {
                match part {
                    std::path::Component::ParentDir => {
                        path.pop();
                    }
                    other => path.push(other),
                }
            }
            included.insert(path.to_str().unwrap().to_string());
        }
    }
    assert_eq!(included, data, "{LIB_MODULE} compile_data vs the include_str!/include_bytes! of src/");
    for f in &data {
        assert!(root().join(f).is_file(), "compile_data {f} does not exist");
    }
}

#[test]
fn android_bp_files_are_bpfmt_clean() {
    let files = ["Android.bp", "aidl/Android.bp", "vts/Android.bp"];
    let out = Command::new("bpfmt").arg("-l").args(files).current_dir(root()).output().unwrap_or_else(|e| {
        panic!("bpfmt: {e} (Debian package blueprint-tools: vts/lane/host-deps.sh blueprint-tools installs it)")
    });
    assert!(out.status.success(), "bpfmt failed: {}", String::from_utf8_lossy(&out.stderr));
    let unformatted = String::from_utf8_lossy(&out.stdout);
    assert!(unformatted.trim().is_empty(), "not bpfmt-formatted (run `bpfmt -w`): {unformatted}");
}

const MATRIX: &str = "vendor.chargetransfer-compatibility-matrix.xml";

#[test]
fn compatibility_matrix_declares_what_the_manifest_fragment_serves() {
    let matrix = read(MATRIX);
    assert!(matrix.contains("<compatibility-matrix version=\"1.0\" type=\"framework\">"), "{MATRIX}: framework matrix");
    assert!(matrix.contains("<hal format=\"aidl\">"), "{MATRIX}: an AIDL HAL");
    // <name> holds the HAL's package first, then the interface's name inside <interface>.
    let names = xml_tags(&matrix, "name");
    assert_eq!(names.first().map(String::as_str), Some(PACKAGE), "{MATRIX}: HAL name vs {VINTF}");
    let manifest = vintf();
    assert_eq!(xml_tags(&matrix, "version"), xml_tags(&manifest, "version"), "{MATRIX} version vs {VINTF}");
    let declared: Vec<String> = xml_tags(&matrix, "instance")
        .iter()
        .map(|instance| format!("{}/{instance}", names.get(1).expect("<interface><name>")))
        .collect();
    assert_eq!(declared, xml_tags(&manifest, "fqname"), "{MATRIX} interface/instance vs {VINTF} fqname");
}

#[test]
fn genfs_contexts_label_what_autoconfig_reads_with_declared_vendor_types() {
    let types = declared_types();
    let te = te_text();
    let mut labelled = Vec::new();
    for line in read("sepolicy/genfs_contexts").lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..2], ["genfscon", "sysfs"], "genfs_contexts: {line}");
        let ty = words[3].split(':').nth(2).unwrap_or_else(|| panic!("genfs_contexts: bad label in {line}"));
        assert!(ty.starts_with("vendor_"), "genfs_contexts: {ty} is not vendor-prefixed");
        let attrs = types.get(ty).unwrap_or_else(|| panic!("genfs_contexts: {ty} is not declared"));
        assert!(attrs.contains("sysfs_type") && attrs.contains("fs_type"), "{ty} needs fs_type, sysfs_type");
        assert!(
            te.contains(&format!("hal_vendor_chargetransfer_default, {ty}"))
                || te.contains(&format!("hal_vendor_chargetransfer_default {ty}:")),
            "the service is granted no read of {ty}"
        );
        labelled.push(format!("/sys{}", words[2]));
    }
    // The paths src/autoconfig/probe.rs reads under /sys (the device tree through /proc/device-tree).
    for path in [
        "/sys/module/dma_heap/parameters/mem_accounting",
        "/sys/kernel/mm/cma",
        "/sys/class/drm",
        "/sys/firmware/devicetree/base/reserved-memory",
    ] {
        assert!(labelled.iter().any(|l| l == path), "genfs_contexts does not label {path}");
    }
    assert!(
        te.contains("hal_vendor_chargetransfer_default proc_cmdline:file"),
        "/proc/cmdline (proc_cmdline) is read by autoconfig"
    );
}

#[test]
fn shipped_policy_trusts_only_domains_the_sepolicy_lets_call() {
    // A trusted context that vendor policy cannot make a client (SurfaceFlinger, cameraserver:
    // platform domains) is trust the device can never exercise.
    let policy: serde_json::Value = serde_json::from_str(&read("config/policy.json")).unwrap();
    let compact: String = te_text().split_whitespace().collect();
    for context in policy["trusted"]["contexts"].as_array().expect("trusted.contexts") {
        let domain = context.as_str().unwrap();
        assert!(
            compact.contains(&format!("hal_client_domain({domain},hal_vendor_chargetransfer)")),
            "config/policy.json trusts {domain}, which sepolicy/ does not make a hal_vendor_chargetransfer client"
        );
    }
}

#[test]
fn su_fds_are_accepted_only_on_debug_builds() {
    let te = read("sepolicy/hal_vendor_chargetransfer.te");
    let compact: String =
        te.lines().map(|l| l.split('#').next().unwrap()).collect::<Vec<_>>().join("\n").split_whitespace().collect();
    assert!(
        compact.contains("userdebug_or_eng(`allowhal_vendor_chargetransfer_serversu:fduse;')"),
        "the VTS test (su) must be able to pass fds on debug builds"
    );
}
