//! minimega's netspecs, `[bridge,]VLAN[,MAC][,driver][,qinq]`: what `vm
//! config net` takes, read by the number of fields and what each looks
//! like, and printed back in minimega's short form (the default bridge and
//! driver left out).
//!
//! Unlike minimega, a driver is a name from a fixed list of QEMU's NIC
//! models, not whatever the local `qemu -device help` says: with QEMU
//! missing, minimega reads `100,e1000` as bridge `100`, VLAN `e1000`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(crate) const DEFAULT_BRIDGE: &str = "mega_bridge";
pub(crate) const DEFAULT_DRIVER: &str = "e1000";

/// QEMU's NIC models (`qemu-system-x86_64 -device help`, network devices).
const DRIVERS: &[&str] = &[
    "e1000",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82550",
    "i82551",
    "i82557a",
    "i82557b",
    "i82557c",
    "i82558a",
    "i82558b",
    "i82559a",
    "i82559b",
    "i82559c",
    "i82559er",
    "i82562",
    "i82801",
    "igb",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "tulip",
    "usb-net",
    "virtio-net",
    "virtio-net-pci",
    "virtio-net-pci-non-transitional",
    "virtio-net-pci-transitional",
    "vmxnet3",
];

/// One NIC as written, before its VLAN is looked up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) bridge: String,
    /// A number or an alias (`LAN`, `other//LAN`).
    pub(crate) vlan: String,
    pub(crate) mac: Option<String>,
    pub(crate) driver: String,
    pub(crate) qinq: bool,
}

/// One NIC of a VM's config: its VLAN looked up, as the launch carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Nic {
    pub(crate) bridge: String,
    pub(crate) vlan: u16,
    /// The alias it was given by, if any.
    pub(crate) alias: Option<String>,
    /// None: a random one at launch.
    pub(crate) mac: Option<String>,
    pub(crate) driver: String,
    pub(crate) qinq: bool,
}

fn is_driver(f: &str) -> bool {
    DRIVERS.contains(&f)
}

/// A MAC address in any form minimega takes (`:` or `-`), lowercased.
pub(crate) fn parse_mac(f: &str) -> Option<String> {
    let parts: Vec<&str> = f.split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Bridge names: what a network device may be called (at most 15 bytes;
/// minimega only warns, and OVS then fails in odd ways).
pub(crate) fn check_ifname(what: &str, n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !n.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid {what} name `{n}`: 1 to 15 letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Reads one netspec.
pub(crate) fn parse(spec: &str) -> Result<Spec> {
    let f: Vec<&str> = spec.split(',').collect();
    let bad = || {
        Error::Usage(format!(
            "malformed netspec `{spec}`: [bridge,]VLAN[,MAC][,driver][,qinq]"
        ))
    };
    if f.iter().any(|x| x.is_empty()) {
        return Err(bad());
    }
    let mut s = Spec {
        bridge: DEFAULT_BRIDGE.into(),
        vlan: String::new(),
        mac: None,
        driver: DEFAULT_DRIVER.into(),
        qinq: false,
    };
    let mac = |x: &str| parse_mac(x);
    // Field by field from the end, as minimega reads them: the last may
    // be qinq, then a driver, then a MAC; what is left is [bridge,]vlan.
    let mut rest: &[&str] = &f;
    if rest.len() > 1 && rest.last() == Some(&"qinq") {
        s.qinq = true;
        rest = &rest[..rest.len() - 1];
    }
    if rest.len() > 1 && is_driver(rest[rest.len() - 1]) {
        s.driver = rest[rest.len() - 1].to_string();
        rest = &rest[..rest.len() - 1];
    }
    if rest.len() > 1 {
        if let Some(m) = mac(rest[rest.len() - 1]) {
            s.mac = Some(m);
            rest = &rest[..rest.len() - 1];
        }
    }
    match rest {
        [v] => s.vlan = v.to_string(),
        [b, v] => {
            check_ifname("bridge", b)?;
            s.bridge = b.to_string();
            s.vlan = v.to_string();
        }
        [_, _, .., odd] => {
            return Err(Error::Usage(format!(
                "malformed netspec `{spec}`: `{odd}` is neither a MAC nor a NIC driver ({}); \
                 [bridge,]VLAN[,MAC][,driver][,qinq]",
                DRIVERS.join(", ")
            )))
        }
        _ => return Err(bad()),
    }
    if let Some(m) = &s.mac {
        let first = u8::from_str_radix(&m[..2], 16).unwrap_or(0);
        if first & 1 == 1 {
            return Err(Error::Usage(format!(
                "netspec `{spec}`: {m} is a multicast address; a NIC needs a unicast one"
            )));
        }
    }
    Ok(s)
}

impl Nic {
    /// What a NIC from another node's launch must hold to: the rules its
    /// netspec was read by (its fields reach QEMU's command line).
    pub(crate) fn check(&self) -> Result<()> {
        check_ifname("bridge", &self.bridge)?;
        if !(1..=4095).contains(&self.vlan) {
            return Err(Error::Usage(format!(
                "invalid VLAN {}: from 1 to 4095",
                self.vlan
            )));
        }
        if !is_driver(&self.driver) {
            return Err(Error::Usage(format!("unknown NIC driver {}", self.driver)));
        }
        if let Some(m) = &self.mac {
            let unicast =
                u8::from_str_radix(m.get(..2).unwrap_or("01"), 16).is_ok_and(|b| b & 1 == 0);
            if parse_mac(m).as_deref() != Some(m.as_str()) || !unicast {
                return Err(Error::Usage(format!("invalid MAC {m}")));
            }
        }
        if let Some(a) = &self.alias {
            let ok = a.len() <= 130
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !ok {
                return Err(Error::Usage(format!("invalid VLAN alias {a}")));
            }
        }
        Ok(())
    }

    /// minimega's short form: `[bridge,]vlan[,mac][,driver][,qinq]`.
    pub(crate) fn show(&self) -> String {
        let mut out = Vec::new();
        if self.bridge != DEFAULT_BRIDGE {
            out.push(self.bridge.clone());
        }
        out.push(self.alias.clone().unwrap_or_else(|| self.vlan.to_string()));
        if let Some(m) = &self.mac {
            out.push(m.clone());
        }
        if self.driver != DEFAULT_DRIVER {
            out.push(self.driver.clone());
        }
        if self.qinq {
            out.push("qinq".into());
        }
        out.join(",")
    }

    /// As `vm info`'s vlan column has it: `LAN (101)` or `101`.
    pub(crate) fn show_vlan(alias: Option<&str>, vlan: Option<u16>) -> String {
        match (alias, vlan) {
            (_, None) => "disconnected".into(),
            (Some(a), Some(v)) => format!("{a} ({v})"),
            (None, Some(v)) => v.to_string(),
        }
    }
}

/// Real vendors' prefixes, as minimega uses for a NIC given no MAC.
const OUIS: &[[u8; 3]] = &[
    [0x00, 0x16, 0x3e], // Xensource
    [0x00, 0x50, 0x56], // VMware
    [0x00, 0x0c, 0x29], // VMware
    [0x08, 0x00, 0x27], // Oracle VirtualBox
    [0x00, 0x15, 0x5d], // Microsoft
    [0x00, 0x1c, 0x42], // Parallels
    [0x00, 0x1b, 0x21], // Intel
    [0x3c, 0xfd, 0xfe], // Intel
    [0x00, 0x25, 0x90], // Super Micro
    [0x00, 0x26, 0xb9], // Dell
];

/// A random MAC with a real vendor's prefix.
pub(crate) fn random_mac() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    let oui = OUIS[b[0] as usize % OUIS.len()];
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        oui[0], oui[1], oui[2], b[1], b[2], b[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(s: &Spec, vlan: u16) -> Nic {
        Nic {
            bridge: s.bridge.clone(),
            vlan,
            alias: s.vlan.parse::<u16>().is_err().then(|| s.vlan.clone()),
            mac: s.mac.clone(),
            driver: s.driver.clone(),
            qinq: s.qinq,
        }
    }

    #[test]
    fn netspecs_read_as_minimega_reads_them_and_print_short() {
        let m = "12:37:13:37:00:02";
        for (spec, bridge, vlan, mac, driver, qinq, short) in [
            ("100", DEFAULT_BRIDGE, "100", None, "e1000", false, "100"),
            ("LAN", DEFAULT_BRIDGE, "LAN", None, "e1000", false, "LAN"),
            (
                "100,e1000",
                DEFAULT_BRIDGE,
                "100",
                None,
                "e1000",
                false,
                "100",
            ),
            (
                "100,qinq",
                DEFAULT_BRIDGE,
                "100",
                None,
                "e1000",
                true,
                "100,qinq",
            ),
            (
                "100,virtio-net-pci",
                DEFAULT_BRIDGE,
                "100",
                None,
                "virtio-net-pci",
                false,
                "100,virtio-net-pci",
            ),
            ("br0,100", "br0", "100", None, "e1000", false, "br0,100"),
            (
                "test_bridge,100,12:37:13:37:00:02,e1000",
                "test_bridge",
                "100",
                Some(m),
                "e1000",
                false,
                "test_bridge,100,12:37:13:37:00:02",
            ),
            (
                "100,12-37-13-37-00-02,qinq",
                DEFAULT_BRIDGE,
                "100",
                Some(m),
                "e1000",
                true,
                "100,12:37:13:37:00:02,qinq",
            ),
            (
                "br0,DMZ,12:37:13:37:00:02,rtl8139,qinq",
                "br0",
                "DMZ",
                Some(m),
                "rtl8139",
                true,
                "br0,DMZ,12:37:13:37:00:02,rtl8139,qinq",
            ),
            (
                "mega_bridge,100,DE:AD:BE:EF:CA:FE",
                DEFAULT_BRIDGE,
                "100",
                Some("de:ad:be:ef:ca:fe"),
                "e1000",
                false,
                "100,de:ad:be:ef:ca:fe",
            ),
        ] {
            let s = parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                (
                    s.bridge.as_str(),
                    s.vlan.as_str(),
                    s.mac.as_deref(),
                    s.driver.as_str(),
                    s.qinq
                ),
                (bridge, vlan, mac, driver, qinq),
                "{spec}"
            );
            assert_eq!(nic(&s, 100).show(), short, "{spec}");
        }
        for bad in [
            "",
            "a,b,c",
            "br0,100,e1000,extra",
            "100,,e1000",
            "a_bridge_name_too_long,100",
            "100,01:00:5e:00:00:01",
            "br/0,100",
        ] {
            assert!(parse(bad).is_err(), "{bad} was taken");
        }
        // A field that is neither MAC nor driver is named, with the drivers.
        let e = parse("foo,LAN,virtio").unwrap_err().to_string();
        assert!(
            e.contains("`virtio` is neither a MAC nor a NIC driver (e1000,")
                && e.contains("virtio-net-pci"),
            "{e}"
        );
        let e = parse("br,LAN,00:11:22:33:44:55,bogus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bogus` is neither"), "{e}");
        assert_eq!(Nic::show_vlan(Some("LAN"), Some(101)), "LAN (101)");
        assert_eq!(Nic::show_vlan(None, None), "disconnected");
        let a = random_mac();
        assert!(parse_mac(&a).is_some() && a != random_mac(), "{a}");
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 1, 0, "{a} is multicast");
    }
}
