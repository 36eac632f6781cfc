//! Checksum and segmentation offloads of a device, through the `SIOCETHTOOL`
//! ioctl's feature interface (what `ethtool -K dev tx off rx off tso off gso
//! off gro off` changes).
//!
//! Why: a veth attached to an OVS netdev (userspace) bridge must not leave
//! checksums or segmentation to "hardware": OVS reads it through an
//! AF_PACKET socket and forwards frames with partial checksums, so TCP
//! stalls while ping works.
//!
//! Features are chosen by name, as `ethtool` does, not by the legacy
//! per-offload commands: those use fixed masks that miss newer features
//! (kernel 6.18's `tx-tcp-accecn-segmentation` stays on after the legacy
//! `ETHTOOL_STSO`, so "tso" would still read "on").
//!
//! The ioctl needs `unsafe`; it is confined to [`ethtool_ioctl`], which
//! checks the buffer against the sizes its header announces.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use super::NetlinkError;

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The offloads `ethtool -k` calls tx-checksumming, rx-checksumming,
/// tcp-segmentation-offload, generic-segmentation-offload and
/// generic-receive-offload: each is on when any of its features is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    pub tx_checksum: bool,
    pub rx_checksum: bool,
    pub tso: bool,
    pub gso: bool,
    pub gro: bool,
}

impl Offloads {
    pub fn any(&self) -> bool {
        self.tx_checksum || self.rx_checksum || self.tso || self.gso || self.gro
    }

    fn set(&mut self, group: Group) {
        match group {
            Group::Tx => self.tx_checksum = true,
            Group::Rx => self.rx_checksum = true,
            Group::Tso => self.tso = true,
            Group::Gso => self.gso = true,
            Group::Gro => self.gro = true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Tx,
    Rx,
    Tso,
    Gso,
    Gro,
}

/// Which `ethtool -K` keyword a kernel feature name belongs to (the same
/// patterns as ethtool's own table).
fn group_of(feature: &str) -> Option<Group> {
    if feature.starts_with("tx-checksum-") {
        Some(Group::Tx)
    } else if feature == "rx-checksum" {
        Some(Group::Rx)
    } else if feature.starts_with("tx-tcp") && feature.ends_with("-segmentation") {
        Some(Group::Tso)
    } else if feature == "tx-generic-segmentation" {
        Some(Group::Gso)
    } else if feature == "rx-gro" {
        Some(Group::Gro)
    } else {
        None
    }
}

/// Turns every offload of [`Offloads`] off on `dev` in the calling thread's
/// network namespace, and checks they read back off.
pub fn offloads_off(dev: &str) -> Result<(), NetlinkError> {
    let sock = control_socket(dev)?;
    let names = feature_names(&sock, dev)?;
    let words = names.len().div_ceil(32);
    // valid = the bits to change, requested = their new value (0: off).
    let mut req = header(ETHTOOL_SFEATURES, 8 + 8 * words);
    put_u32(&mut req, 4, words as u32);
    for (bit, _) in names.iter().enumerate().filter(|(_, n)| group_of(n).is_some()) {
        let at = 8 + 8 * (bit / 32);
        let valid = get_u32(&req, at) | (1 << (bit % 32));
        put_u32(&mut req, at, valid);
    }
    ethtool_ioctl(&sock, dev, &mut req)?;
    let now = read_offloads(&sock, dev, &names)?;
    if now.any() {
        return Err(NetlinkError::Ethtool {
            dev: dev.to_string(),
            op: "turn offloads off",
            source: std::io::Error::other(format!(
                "still on after the change (fixed by the driver?): {now:?}"
            )),
        });
    }
    Ok(())
}

/// Reads the offloads of `dev` in the calling thread's network namespace.
pub fn offloads(dev: &str) -> Result<Offloads, NetlinkError> {
    let sock = control_socket(dev)?;
    let names = feature_names(&sock, dev)?;
    read_offloads(&sock, dev, &names)
}

fn read_offloads(sock: &impl AsRawFd, dev: &str, names: &[String]) -> Result<Offloads, NetlinkError> {
    let words = names.len().div_ceil(32);
    let mut buf = header(ETHTOOL_GFEATURES, 8 + 16 * words);
    put_u32(&mut buf, 4, words as u32);
    ethtool_ioctl(sock, dev, &mut buf)?;
    Ok(offloads_from_active(names, |word| get_u32(&buf, 8 + 16 * word + 8)))
}

/// Folds active feature bits (`active(word)`) into the five groups.
fn offloads_from_active(names: &[String], active: impl Fn(usize) -> u32) -> Offloads {
    let mut out = Offloads::default();
    for (bit, name) in names.iter().enumerate() {
        if let Some(group) = group_of(name) {
            if active(bit / 32) & (1 << (bit % 32)) != 0 {
                out.set(group);
            }
        }
    }
    out
}

/// The kernel's feature names, by bit number.
fn feature_names(sock: &impl AsRawFd, dev: &str) -> Result<Vec<String>, NetlinkError> {
    let mut info = header(ETHTOOL_GSSET_INFO, 20);
    put_u64(&mut info, 8, 1 << ETH_SS_FEATURES);
    ethtool_ioctl(sock, dev, &mut info)?;
    if get_u64(&info, 8) & (1 << ETH_SS_FEATURES) == 0 {
        return Err(NetlinkError::Ethtool {
            dev: dev.to_string(),
            op: "read feature names",
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        });
    }
    let count = get_u32(&info, 16) as usize;
    let mut strings = header(ETHTOOL_GSTRINGS, 12 + ETH_GSTRING_LEN * count);
    put_u32(&mut strings, 4, ETH_SS_FEATURES);
    put_u32(&mut strings, 8, count as u32);
    ethtool_ioctl(sock, dev, &mut strings)?;
    Ok(parse_strings(&strings[12..], count))
}

fn parse_strings(data: &[u8], count: usize) -> Vec<String> {
    data.chunks(ETH_GSTRING_LEN)
        .take(count)
        .map(|s| {
            let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        })
        .collect()
}

fn control_socket(dev: &str) -> Result<std::net::UdpSocket, NetlinkError> {
    // Any socket of the namespace works for SIOCETHTOOL; the ioctl itself
    // checks CAP_NET_ADMIN for changes.
    std::net::UdpSocket::bind("0.0.0.0:0").map_err(|source| NetlinkError::Ethtool {
        dev: dev.to_string(),
        op: "open control socket",
        source,
    })
}

fn header(cmd: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    put_u32(&mut b, 0, cmd);
    b
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// How many bytes the kernel may read or write for the command in `buf`'s
/// header (`None`: a command this module does not send).
fn required_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 8 {
        return None;
    }
    let n = |at| if buf.len() >= at + 4 { Some(get_u32(buf, at) as usize) } else { None };
    match get_u32(buf, 0) {
        // struct ethtool_sset_info + one u32 per set in the mask (one here).
        ETHTOOL_GSSET_INFO if buf.len() >= 16 => Some(16 + 4 * get_u64(buf, 8).count_ones() as usize),
        // struct ethtool_gstrings + len strings.
        ETHTOOL_GSTRINGS => n(8).map(|len| 12 + ETH_GSTRING_LEN * len),
        // struct ethtool_gfeatures: size blocks of 4 u32.
        ETHTOOL_GFEATURES => n(4).map(|size| 8 + 16 * size),
        // struct ethtool_sfeatures: size blocks of 2 u32.
        ETHTOOL_SFEATURES => n(4).map(|size| 8 + 8 * size),
        _ => None,
    }
}

/// Runs one ethtool command whose request and answer are `buf` (a C
/// struct laid out by the caller, command first).
fn ethtool_ioctl(sock: &impl AsRawFd, dev: &str, buf: &mut [u8]) -> Result<(), NetlinkError> {
    let err = |source| NetlinkError::Ethtool { dev: dev.to_string(), op: "ioctl SIOCETHTOOL", source };
    let name = dev.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    match required_len(buf) {
        Some(need) if buf.len() >= need => {}
        _ => return Err(err(std::io::Error::other("ethtool request buffer too short for its header"))),
    }
    // SAFETY: `ifreq` is plain old data, valid when zeroed; the name is
    // copied with its NUL terminator inside IFNAMSIZ (checked above).
    // `ifru_data` points at `buf`, which lives across the call and is at
    // least as long as the kernel may access for this command, as its header
    // announces (checked by `required_len`). For ETHTOOL_GSTRINGS the kernel
    // writes its own count of strings rather than ours; for the feature set
    // that count is the constant NETDEV_FEATURE_COUNT, the same number
    // ETHTOOL_GSSET_INFO returned just before. The fd is a valid socket
    // borrowed for the duration of the call.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
        libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req)
    };
    // A positive result (ETHTOOL_F_WISH/UNSUPPORTED) only says some bits
    // could not change; the read-back decides.
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_map_to_ethtool_keywords() {
        assert_eq!(group_of("tx-checksum-ip-generic"), Some(Group::Tx));
        assert_eq!(group_of("rx-checksum"), Some(Group::Rx));
        assert_eq!(group_of("tx-tcp-segmentation"), Some(Group::Tso));
        assert_eq!(group_of("tx-tcp-accecn-segmentation"), Some(Group::Tso));
        assert_eq!(group_of("tx-tcp6-segmentation"), Some(Group::Tso));
        assert_eq!(group_of("tx-generic-segmentation"), Some(Group::Gso));
        assert_eq!(group_of("rx-gro"), Some(Group::Gro));
        assert_eq!(group_of("tx-udp-segmentation"), None);
        assert_eq!(group_of("rx-gro-list"), None);
        assert_eq!(group_of("tx-scatter-gather"), None);
    }

    #[test]
    fn active_bits_fold_into_groups_across_words() {
        let mut names: Vec<String> = (0..40).map(|i| format!("other-{i}")).collect();
        names[3] = "rx-checksum".into();
        names[35] = "tx-tcp-accecn-segmentation".into();
        names[36] = "rx-gro".into();
        // Bit 3 of each word: rx-checksum (bit 3) and accecn (bit 35).
        let got = offloads_from_active(&names, |_| 1 << 3);
        assert_eq!(got, Offloads { rx_checksum: true, tso: true, ..Offloads::default() });
        assert!(!offloads_from_active(&names, |_| 0).any());
    }

    #[test]
    fn strings_are_nul_terminated_in_fixed_slots() {
        let mut data = vec![0u8; 64];
        data[..5].copy_from_slice(b"rx-gr");
        data[32..34].copy_from_slice(b"ab");
        assert_eq!(parse_strings(&data, 2), ["rx-gr", "ab"]);
    }

    #[test]
    fn buffers_shorter_than_their_header_says_are_refused() {
        let mut b = header(ETHTOOL_GFEATURES, 8 + 16);
        put_u32(&mut b, 4, 2);
        assert_eq!(required_len(&b), Some(40));
        let mut s = header(ETHTOOL_GSTRINGS, 12);
        put_u32(&mut s, 8, 3);
        assert_eq!(required_len(&s), Some(12 + 96));
        assert_eq!(required_len(&header(0x99, 8)), None, "unknown commands are never sent");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let err = ethtool_ioctl(&sock, "lo", &mut b).expect_err("short buffer");
        assert!(err.to_string().contains("too short"), "{err}");
    }
}
