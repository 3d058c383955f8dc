//! `vm config`: what the next VMs are launched with, field by field, with
//! minimega's names and defaults. Values are checked when they are set,
//! where they can be known then (a number, a file on this node), so a bad
//! one fails at `vm config` and not at launch on a host.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::net::netspec::Nic;
use crate::{Error, Result};

/// What a VM is launched with; minimega's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Config {
    pub(crate) vcpus: u64,
    pub(crate) memory_mib: u64,
    /// Disk images (qcow2 or raw), in order; written to a snapshot
    /// unless `snapshot` is false. Records from before several disks hold
    /// one path as `disk`.
    #[serde(alias = "disk", deserialize_with = "disks_or_one")]
    pub(crate) disks: Vec<Disk>,
    pub(crate) cdrom: Option<String>,
    pub(crate) kernel: Option<String>,
    pub(crate) initrd: Option<String>,
    /// The kernel's command line, a word each.
    pub(crate) append: Vec<String>,
    /// NICs, their VLANs looked up (`vm config net`, set by the command
    /// layer, which owns the VLAN tables). Named apart from the old `net`
    /// strings, which older records may hold and are ignored.
    pub(crate) nics: Vec<Nic>,
    pub(crate) schedule: Option<String>,
    pub(crate) colocate: Option<String>,
    /// At most this many other VMs on its host; 0: alone.
    pub(crate) coschedule: Option<usize>,
    pub(crate) tags: BTreeMap<String, String>,
    /// None: a fresh one for each VM at launch.
    pub(crate) uuid: Option<String>,
    pub(crate) snapshot: bool,
    /// A container's root filesystem; kept for container VMs, unused by kvm.
    pub(crate) filesystem: Option<String>,
    /// QEMU's `-cpu` model (None: QEMU's default, which TCG runs too;
    /// minimega's is `host`, which only KVM runs).
    pub(crate) cpu: Option<String>,
    /// QEMU's machine type (`-machine`; None: QEMU's default, `pc`).
    pub(crate) machine: Option<String>,
    /// Words appended to QEMU's command line as they are.
    pub(crate) qemu_append: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            vcpus: 1,
            memory_mib: 2048,
            disks: Vec::new(),
            cdrom: None,
            kernel: None,
            initrd: None,
            append: Vec::new(),
            nics: Vec::new(),
            schedule: None,
            colocate: None,
            coschedule: None,
            tags: BTreeMap::new(),
            uuid: None,
            snapshot: true,
            filesystem: None,
            cpu: None,
            machine: None,
            qemu_append: Vec::new(),
        }
    }
}

/// Every field `vm config` takes, in the order it shows them.
pub(crate) const FIELDS: &[&str] = &[
    "vcpus",
    "memory",
    "disks",
    "cdrom",
    "kernel",
    "initrd",
    "append",
    "net",
    "schedule",
    "colocate",
    "coschedule",
    "tags",
    "uuid",
    "snapshot",
    "filesystem",
    "cpu",
    "machine",
    "qemu-append",
];

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// A map as minimega prints one: `{"a":"b"}`.
pub(crate) fn show_tags(tags: &BTreeMap<String, String>) -> String {
    serde_json::to_string(tags).unwrap_or_default()
}

impl Config {
    /// One field as `vm config` shows it.
    pub(crate) fn show(&self, field: &str) -> String {
        match field {
            "vcpus" => self.vcpus.to_string(),
            "memory" => self.memory_mib.to_string(),
            "disks" => self
                .disks
                .iter()
                .map(Disk::show)
                .collect::<Vec<_>>()
                .join(" "),
            "cdrom" => opt(&self.cdrom),
            "kernel" => opt(&self.kernel),
            "initrd" => opt(&self.initrd),
            "append" => self.append.join(" "),
            "net" if self.nics.is_empty() => String::new(),
            "net" => format!(
                "[{}]",
                self.nics
                    .iter()
                    .map(Nic::show)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            "schedule" => opt(&self.schedule),
            "colocate" => opt(&self.colocate),
            "coschedule" => self.coschedule.map_or("-1".into(), |n| n.to_string()),
            "tags" => show_tags(&self.tags),
            "uuid" => opt(&self.uuid),
            "snapshot" => self.snapshot.to_string(),
            "filesystem" => opt(&self.filesystem),
            "cpu" => opt(&self.cpu),
            "machine" => opt(&self.machine),
            "qemu-append" => self.qemu_append.join(" "),
            _ => String::new(),
        }
    }

    /// The paths of the files QEMU opens.
    pub(crate) fn files(&self) -> Vec<&String> {
        let one = [&self.cdrom, &self.kernel, &self.initrd];
        let disks = self.disks.iter().map(|d| &d.path);
        disks.chain(one.into_iter().flatten()).collect()
    }

    pub(crate) fn files_mut(&mut self) -> Vec<&mut String> {
        let one = [&mut self.cdrom, &mut self.kernel, &mut self.initrd];
        let disks = self.disks.iter_mut().map(|d| &mut d.path);
        disks.chain(one.into_iter().flatten()).collect()
    }

    /// Sets `field` from `values` (one word for most fields; the words of
    /// `append` and `net`; a key and a value for `tags`), or fails and
    /// changes nothing. Relative paths are taken from `cwd`.
    pub(crate) fn set(&mut self, field: &str, values: &[String], cwd: Option<&Path>) -> Result<()> {
        let one = || -> Result<&str> {
            match values {
                [v] => Ok(v.as_str()),
                _ => Err(Error::Usage(format!("vm config {field} takes one value"))),
            }
        };
        let mut next = self.clone();
        match field {
            "vcpus" => next.vcpus = positive(field, one()?, 512)?,
            "memory" => next.memory_mib = positive(field, one()?, 16 << 20)?,
            "disks" => {
                next.disks = values
                    .iter()
                    .map(|v| Disk::parse(v, cwd))
                    .collect::<Result<_>>()?
            }
            "cdrom" => next.cdrom = Some(file(one()?, cwd)?),
            "kernel" => next.kernel = Some(file(one()?, cwd)?),
            "initrd" => next.initrd = Some(file(one()?, cwd)?),
            "filesystem" => next.filesystem = Some(file(one()?, cwd)?),
            "append" => next.append = values.to_vec(),
            "cpu" => next.cpu = Some(qemu_name(field, one()?, true)?),
            "machine" => next.machine = Some(qemu_name(field, one()?, false)?),
            "qemu-append" => next.qemu_append = values.to_vec(),
            // NICs need their VLANs looked up: `vm config net` sets
            // `nics` itself.
            "net" => {
                return Err(Error::usage(
                    "vm config net sets NICs through the namespace",
                ))
            }
            "schedule" => {
                if let Some(c) = &self.colocate {
                    return Err(Error::Usage(format!(
                        "cannot set schedule: colocate is set (to {c}); clear vm config colocate first"
                    )));
                }
                next.schedule = Some(one()?.to_string());
            }
            "colocate" => {
                if let Some(s) = &self.schedule {
                    return Err(Error::Usage(format!(
                        "cannot set colocate: schedule is set (to {s}); clear vm config schedule first"
                    )));
                }
                next.colocate = Some(one()?.to_string());
            }
            "coschedule" => {
                let v = one()?;
                next.coschedule = match v.parse::<i64>() {
                    Ok(-1) => None,
                    Ok(n) if n >= 0 => Some(n as usize),
                    _ => {
                        return Err(Error::Usage(format!(
                            "coschedule: `{v}` is not a count of VMs (0 or more; -1 for no limit)"
                        )))
                    }
                };
            }
            "tags" => match values {
                [k, v] => {
                    next.tags.insert(k.clone(), v.clone());
                }
                _ => return Err(Error::usage("vm config tags KEY VALUE")),
            },
            "uuid" => {
                let v = one()?;
                if !is_uuid(v) {
                    return Err(Error::Usage(format!(
                        "uuid: `{v}` is not a UUID like 0e5f7d33-3a4b-4a2e-9a7c-0c1f6b1a9e21"
                    )));
                }
                next.uuid = Some(v.to_ascii_lowercase());
            }
            "snapshot" => {
                next.snapshot = match one()? {
                    "true" => true,
                    "false" => false,
                    v => {
                        return Err(Error::Usage(format!(
                            "snapshot: `{v}` is not true or false"
                        )))
                    }
                }
            }
            _ => return Err(Error::Usage(format!("no vm config field {field}"))),
        }
        *self = next;
        Ok(())
    }

    /// Puts `field` back to its default.
    pub(crate) fn reset(&mut self, field: &str) {
        let d = Config::default();
        match field {
            "vcpus" => self.vcpus = d.vcpus,
            "memory" => self.memory_mib = d.memory_mib,
            "disks" => self.disks.clear(),
            "cdrom" => self.cdrom = None,
            "kernel" => self.kernel = None,
            "initrd" => self.initrd = None,
            "append" => self.append.clear(),
            "net" => self.nics.clear(),
            "schedule" => self.schedule = None,
            "colocate" => self.colocate = None,
            "coschedule" => self.coschedule = None,
            "tags" => self.tags.clear(),
            "uuid" => self.uuid = None,
            "snapshot" => self.snapshot = d.snapshot,
            "filesystem" => self.filesystem = None,
            "cpu" => self.cpu = None,
            "machine" => self.machine = None,
            "qemu-append" => self.qemu_append.clear(),
            _ => {}
        }
    }
}

/// One disk of `vm config disks`: minimega's diskspec,
/// `PATH[,INTERFACE][,CACHE]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Disk {
    pub(crate) path: String,
    /// QEMU's `if=`; None: ide.
    pub(crate) interface: Option<String>,
    /// QEMU's `cache=`; None: unsafe for a snapshot (whose writes are
    /// thrown away), else writeback, as minimega has them.
    pub(crate) cache: Option<String>,
}

/// QEMU's drive interfaces that minimega takes.
pub(crate) const INTERFACES: &[&str] = &[
    "ahci", "ide", "scsi", "sd", "mtd", "floppy", "pflash", "virtio",
];
/// QEMU's cache modes.
pub(crate) const CACHES: &[&str] = &["none", "writeback", "unsafe", "directsync", "writethrough"];

impl Disk {
    /// `PATH[,INTERFACE][,CACHE]`; the path must exist here.
    pub(crate) fn parse(spec: &str, cwd: Option<&Path>) -> Result<Disk> {
        let (path, opts) = split_diskspec(spec);
        let path = file(path, cwd).map_err(|e| match diskspec_hint(spec) {
            Some(h) => Error::NotFound(format!("{e}; {h}")),
            None => e,
        })?;
        let mut d = Disk {
            path,
            interface: None,
            cache: None,
        };
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            let slot = if INTERFACES.contains(&o) {
                &mut d.interface
            } else {
                &mut d.cache
            };
            if slot.replace(o.to_string()).is_some() {
                return Err(Error::Usage(format!(
                    "disk `{spec}`: two interfaces or two cache modes; a diskspec is \
                     PATH[,INTERFACE][,CACHE]"
                )));
            }
        }
        Ok(d)
    }

    /// As `vm config disks` shows it: the spec it was given, made whole.
    pub(crate) fn show(&self) -> String {
        [
            Some(&self.path),
            self.interface.as_ref(),
            self.cache.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(",")
    }

    /// What a host checks of a head's disk before QEMU sees it.
    fn check(&self) -> Result<()> {
        let known =
            |v: &Option<String>, all: &[&str]| v.as_deref().is_none_or(|v| all.contains(&v));
        if known(&self.interface, INTERFACES) && known(&self.cache, CACHES) {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "disk {}: an unknown interface or cache",
                self.show()
            )))
        }
    }
}

/// A diskspec's path and its options (`a.qcow2,virtio,unsafe` ->
/// `a.qcow2`, `virtio,unsafe`): the words at its end that name an
/// interface or a cache mode, at most two, so a path may hold commas.
/// A `file:` word's name is fetched without them, as minimega does.
pub(crate) fn split_diskspec(spec: &str) -> (&str, &str) {
    let mut cut = spec.len();
    for _ in 0..2 {
        match spec[..cut].rsplit_once(',') {
            Some((head, o)) if INTERFACES.contains(&o) || CACHES.contains(&o) => cut = head.len(),
            _ => break,
        }
    }
    (&spec[..cut], spec[cut..].trim_start_matches(','))
}

/// For a diskspec whose path was not found: what its last word would
/// have to be, if it was meant as an option (`a.img,virtoi`).
pub(crate) fn diskspec_hint(spec: &str) -> Option<String> {
    let (_, w) = spec.rsplit_once(',')?;
    (!INTERFACES.contains(&w) && !CACHES.contains(&w)).then(|| {
        format!(
            "if `{w}` is meant as an option (PATH[,INTERFACE][,CACHE]), it is neither an \
             interface ({}) nor a cache mode ({})",
            INTERFACES.join(", "),
            CACHES.join(", ")
        )
    })
}

/// `disks` as records hold it: a list, or the one path (or none) of
/// records from before several disks.
fn disks_or_one<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Disk>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Many(Vec<Disk>),
        One(Option<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Many(v) => v,
        Either::One(p) => p
            .into_iter()
            .map(|path| Disk {
                path,
                interface: None,
                cache: None,
            })
            .collect(),
    })
}

/// A CPU model (with its `+flag,-flag` list: `commas`) or a machine
/// type, as QEMU names them; checked again on the host, since a head's
/// config reaches QEMU's command line there.
pub(crate) fn qemu_name(field: &str, v: &str, commas: bool) -> Result<String> {
    let ok = !v.is_empty()
        && v.len() <= 256
        && !v.starts_with(['-', ','])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-+=".contains(c) || (commas && c == ','));
    if ok {
        Ok(v.to_string())
    } else {
        Err(Error::Usage(format!(
            "{field}: `{v}` is not a name QEMU gives a {} (see qemu-system-x86_64 {} help)",
            if commas { "CPU model" } else { "machine type" },
            if commas { "-cpu" } else { "-machine" }
        )))
    }
}

impl Config {
    /// What a host checks of a config from a head before QEMU sees it:
    /// what `set` checked on the head.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(c) = &self.cpu {
            qemu_name("cpu", c, true)?;
        }
        if let Some(m) = &self.machine {
            qemu_name("machine", m, false)?;
        }
        self.disks.iter().try_for_each(Disk::check)
    }
}

fn positive(field: &str, v: &str, max: u64) -> Result<u64> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(Error::Usage(format!(
            "{field}: `{v}` is not a whole number from 1 to {max}"
        ))),
    }
}

/// A path that exists here, made absolute: the hosts see the same path
/// (a testbed shares its images), and a typo shows now, not at launch.
fn file(v: &str, cwd: Option<&Path>) -> Result<String> {
    let p = Path::new(v);
    let p = match cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    };
    if !p.exists() {
        return Err(Error::NotFound(format!("no such file: {}", p.display())));
    }
    Ok(p.display().to_string())
}

pub(crate) fn is_uuid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A random (version 4) UUID.
pub(crate) fn new_uuid() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux once booted; a zero UUID would
    // still be a valid, if dull, one.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bad_values_fail_at_config_time_and_change_nothing() {
        let mut c = Config::default();
        c.set("memory", &s(&["512"]), None).unwrap();
        for (f, v, why) in [
            ("memory", "-5", "not a whole number"),
            ("memory", "0", "not a whole number"),
            ("vcpus", "two", "not a whole number"),
            (
                "disks",
                "/nonexistent/x.qcow2",
                "no such file: /nonexistent/x.qcow2",
            ),
            ("coschedule", "-2", "not a count"),
            ("uuid", "nope", "not a UUID"),
            ("snapshot", "yes", "not true or false"),
            ("bogus", "1", "no vm config field bogus"),
            ("cpu", "host;rm", "not a name QEMU gives a CPU model"),
            ("cpu", "-help", "not a name QEMU gives a CPU model"),
            (
                "machine",
                "q35,accel=kvm",
                "not a name QEMU gives a machine type",
            ),
        ] {
            let e = c.set(f, &s(&[v]), None).unwrap_err().to_string();
            assert!(e.contains(why), "{f} {v}: {e}");
        }
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.vcpus, 1);
        // schedule and colocate exclude each other, in either order.
        c.set("schedule", &s(&["n1"]), None).unwrap();
        assert!(c.set("colocate", &s(&["a"]), None).is_err());
        c.reset("schedule");
        c.set("colocate", &s(&["a"]), None).unwrap();
        assert!(c.set("schedule", &s(&["n1"]), None).is_err());
        c.set("coschedule", &s(&["0"]), None).unwrap();
        assert_eq!(c.show("coschedule"), "0");
        c.set("cpu", &s(&["Haswell,+vmx,-svm"]), None).unwrap();
        c.set("machine", &s(&["pc-q35-7.2"]), None).unwrap();
        c.set("qemu-append", &s(&["-vga", "std"]), None).unwrap();
        assert_eq!(c.show("qemu-append"), "-vga std");
        c.check().unwrap();
        c.set("tags", &s(&["role", "web"]), None).unwrap();
        assert_eq!(c.show("tags"), r#"{"role":"web"}"#);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.img"), b"x").unwrap();
        c.set("disks", &s(&["d.img"]), Some(dir.path())).unwrap();
        let d = dir.path().join("d.img").display().to_string();
        assert_eq!(c.show("disks"), d);
        // minimega's diskspecs: several disks, each with an interface and
        // a cache mode, in either order after the path.
        std::fs::write(dir.path().join("e,1.img"), b"x").unwrap();
        c.set(
            "disks",
            &s(&["d.img,virtio", "e,1.img,unsafe,ide"]),
            Some(dir.path()),
        )
        .unwrap();
        let e = dir.path().join("e,1.img").display().to_string();
        assert_eq!(c.show("disks"), format!("{d},virtio {e},ide,unsafe"));
        assert_eq!(c.files(), [&d, &e]);
        for (bad, why) in [
            ("d.img,virtio,ide", "two interfaces"),
            ("d.img,virtoi", "if `virtoi` is meant as an option"),
        ] {
            let err = c.set("disks", &s(&[bad]), Some(dir.path())).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        assert_eq!(c.disks.len(), 2, "a bad spec changed the list");
        for f in FIELDS {
            c.reset(f);
        }
        assert_eq!(c, Config::default());
        // A record from before several disks, with its one `disk`.
        #[derive(Serialize)]
        struct Old {
            disk: Option<String>,
            memory_mib: u64,
        }
        for (old, want) in [(Some("/i/a.img"), 1), (None, 0)] {
            let bytes = cbor4ii::serde::to_vec(
                Vec::new(),
                &Old {
                    disk: old.map(str::to_string),
                    memory_mib: 64,
                },
            )
            .unwrap();
            let c: Config = cbor4ii::serde::from_slice(&bytes).unwrap();
            assert_eq!((c.disks.len(), c.memory_mib), (want, 64));
            if want == 1 {
                assert_eq!(c.show("disks"), "/i/a.img");
            }
        }
        let u = new_uuid();
        assert!(is_uuid(&u) && u.as_bytes()[14] == b'4', "{u}");
        assert_ne!(u, new_uuid());
    }
}
