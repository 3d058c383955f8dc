//! Which IP each MAC uses, as minimega learns it for `vm info`: ARP and
//! IPv6 neighbour discovery seen on mm's bridges. A packet socket on each
//! bridge's own port (which gets every flooded frame, and every ARP frame
//! once the bridge's flow copies them there) reads only those frames (a
//! kernel filter drops the rest); the pure parser here is tested alone.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The addresses a MAC was last seen with.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Seen {
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) ip6: Option<Ipv6Addr>,
}

/// What one frame says a MAC uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Learnt {
    V4([u8; 6], Ipv4Addr),
    V6([u8; 6], Ipv6Addr),
}

/// Reads an Ethernet frame (with or without one 802.1Q tag): the sender
/// of an ARP packet, of a neighbour solicitation (not duplicate address
/// detection, which is sent from ::), or the target of an advertisement.
pub(crate) fn parse(f: &[u8]) -> Option<Learnt> {
    if f.len() < 14 {
        return None;
    }
    let src: [u8; 6] = f[6..12].try_into().ok()?;
    let mut ty = u16::from_be_bytes([f[12], f[13]]);
    let mut p = 14;
    if ty == 0x8100 || ty == 0x88a8 {
        if f.len() < 18 {
            return None;
        }
        ty = u16::from_be_bytes([f[16], f[17]]);
        p = 18;
    }
    let b = &f[p..];
    match ty {
        0x0806 => {
            // htype 1 (Ethernet), ptype IPv4, lengths 6 and 4.
            if b.len() < 28 || b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
                return None;
            }
            let sha: [u8; 6] = b[8..14].try_into().ok()?;
            let spa = Ipv4Addr::new(b[14], b[15], b[16], b[17]);
            // Only what a NIC says of itself; no probes from 0.0.0.0.
            (sha == src && !spa.is_unspecified()).then_some(Learnt::V4(sha, spa))
        }
        0x86dd => {
            // IPv6 header (40 bytes), next header ICMPv6, hop limit 255.
            if b.len() < 40 + 24 || b[6] != 58 || b[7] != 255 {
                return None;
            }
            let ip6 = |o: usize| -> Ipv6Addr {
                let a: [u8; 16] = b[o..o + 16].try_into().unwrap_or([0; 16]);
                Ipv6Addr::from(a)
            };
            let icmp = &b[40..];
            match icmp[0] {
                135 => {
                    let s = ip6(8);
                    (!s.is_unspecified()).then_some(Learnt::V6(src, s))
                }
                136 => {
                    let t = ip6(40 + 8);
                    (!t.is_unspecified()).then_some(Learnt::V6(src, t))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

pub(crate) fn show_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The table, and the readers that fill it, one per bridge.
#[derive(Default)]
pub(crate) struct Snooper {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    readers: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Snooper {
    /// What `mac` (lower case, `:`-separated) was seen with.
    pub(crate) fn seen(&self, mac: &str) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mac)
            .cloned()
            .unwrap_or_default()
    }

    fn learn(seen: &Mutex<HashMap<String, Seen>>, l: Learnt) {
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a flood of made-up MACs cannot grow it without end.
        let key = match l {
            Learnt::V4(m, _) | Learnt::V6(m, _) => show_mac(&m),
        };
        if s.len() >= MAX_MACS && !s.contains_key(&key) {
            // Full: the MACs known keep their addresses.
            return;
        }
        match l {
            Learnt::V4(m, ip) => s.entry(show_mac(&m)).or_default().ip = Some(ip),
            Learnt::V6(m, ip) => s.entry(show_mac(&m)).or_default().ip6 = Some(ip),
        }
    }

    /// Starts reading `bridge`'s frames, unless it is read already. A
    /// bridge without a device here (an odd datapath) is only logged.
    pub(crate) fn watch(&self, bridge: &str) {
        let mut r = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if r.get(bridge).is_some_and(|s| !s.load(Ordering::Relaxed)) {
            return;
        }
        let fd = match open(bridge) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(
                    "cannot read ARP on bridge {bridge}; vm info shows no IPs there: {e}"
                );
                return;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        r.insert(bridge.to_string(), stop.clone());
        let seen = self.seen.clone();
        let name = bridge.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("snoop-{name}"))
            .spawn(move || {
                let mut buf = vec![0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: recv(2) into a buffer of its length, on a
                    // socket this thread owns.
                    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                        ) {
                            continue;
                        }
                        // ENETDOWN when OVS reconfigures the port, once;
                        // ENXIO when the bridge has gone.
                        let gone = matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV));
                        if gone {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                    if let Some(l) = parse(&buf[..n as usize]) {
                        Snooper::learn(&seen, l);
                    }
                }
                // SAFETY: closing the socket this thread owns, once.
                unsafe { libc::close(fd) };
                // Ended: a later watch of the bridge starts anew.
                stop.store(true, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot read ARP on bridge {bridge}: {e}");
            r.remove(bridge);
            // SAFETY: the thread never started; the socket is still ours.
            unsafe { libc::close(fd) };
        }
    }

    /// Stops reading `bridge` (it is being removed).
    pub(crate) fn unwatch(&self, bridge: &str) {
        if let Some(s) = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(bridge)
        {
            s.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Snooper {
    fn drop(&mut self) {
        for s in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            s.store(true, Ordering::Relaxed);
        }
    }
}

/// Most MACs remembered.
const MAX_MACS: usize = 65_536;

/// A packet socket on `dev` that passes only ARP and IPv6 (tagged or not),
/// with a 1 s receive timeout so its reader can notice a stop.
fn open(dev: &str) -> std::io::Result<i32> {
    let name = std::ffi::CString::new(dev).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: if_nametoindex on a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            all as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fail = |fd: i32| {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the socket made above.
        unsafe { libc::close(fd) };
        e
    };
    // ethertype at 12 (or, past one tag, at 16) is ARP or IPv6.
    let code = |c: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code: c, jt, jf, k };
    const LDH: u16 = 0x28;
    const JEQ: u16 = 0x15;
    const RET: u16 = 0x06;
    let mut prog = [
        code(LDH, 0, 0, 12),
        code(JEQ, 2, 0, 0x8100),
        code(JEQ, 4, 0, 0x0806),
        code(JEQ, 3, 4, 0x86dd),
        code(LDH, 0, 0, 16),
        code(JEQ, 1, 0, 0x0806),
        code(JEQ, 0, 1, 0x86dd),
        code(RET, 0, 0, 0xffff),
        code(RET, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a filter program and a timeval that outlive
    // the calls, and bind with a sockaddr_ll of its own size.
    unsafe {
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        ) != 0
        {
            return Err(fail(fd));
        }
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        ) != 0
        {
            return Err(fail(fd));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = idx as i32;
        if libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(fail(fd));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 1, 2, 3];

    fn arp(tagged: bool, sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(MAC);
        if tagged {
            f.extend([0x81, 0x00, 0x00, 101]);
        }
        f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend(sha);
        f.extend(spa);
        f.extend([0; 6]);
        f.extend([10, 0, 0, 9]);
        f
    }

    fn nd(kind: u8, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
        f.extend(MAC);
        f.extend([0x86, 0xdd]);
        f.extend([0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend(src.octets());
        f.extend(Ipv6Addr::LOCALHOST.octets());
        f.extend([kind, 0, 0, 0, 0, 0, 0, 0]);
        f.extend(target.octets());
        f
    }

    #[test]
    fn arp_and_neighbour_discovery_give_a_macs_address() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(
            parse(&arp(false, MAC, [10, 0, 0, 5])),
            Some(Learnt::V4(MAC, ip))
        );
        assert_eq!(
            parse(&arp(true, MAC, [10, 0, 0, 5])),
            Some(Learnt::V4(MAC, ip))
        );
        // A probe, and a sender that is not the frame's.
        assert_eq!(parse(&arp(false, MAC, [0, 0, 0, 0])), None);
        assert_eq!(parse(&arp(false, [2; 6], [10, 0, 0, 5])), None);
        let a: Ipv6Addr = "fe80::216:3eff:fe01:203".parse().unwrap();
        let t: Ipv6Addr = "2001:db8::5".parse().unwrap();
        assert_eq!(parse(&nd(135, a, t)), Some(Learnt::V6(MAC, a)));
        assert_eq!(parse(&nd(136, a, t)), Some(Learnt::V6(MAC, t)));
        assert_eq!(parse(&nd(135, Ipv6Addr::UNSPECIFIED, t)), None);
        assert_eq!(parse(&nd(128, a, t)), None);
        // Short and odd frames are nothing.
        for n in 0..40 {
            let f = arp(true, MAC, [10, 0, 0, 5]);
            let _ = parse(&f[..n.min(f.len())]);
        }
        assert_eq!(parse(&[0u8; 13]), None);
        let s = Snooper::default();
        Snooper::learn(&s.seen, Learnt::V4(MAC, ip));
        Snooper::learn(&s.seen, Learnt::V6(MAC, a));
        assert_eq!(
            s.seen("00:16:3e:01:02:03"),
            Seen {
                ip: Some(ip),
                ip6: Some(a)
            }
        );
    }
}
