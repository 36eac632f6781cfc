//! Sets of addresses and ports as the prefixes a flow can match: an ipBlock
//! minus its exceptions, and a port range (`port`..=`endPort`) as masked
//! port matches.

use std::net::Ipv4Addr;

use crate::flow::Ipv4Prefix;

/// `cidr` without the addresses of `except`, as the fewest prefixes (each
/// exception splits the prefixes it overlaps into their halves until the
/// pieces are inside or outside it).
pub fn subtract(cidr: Ipv4Prefix, except: &[Ipv4Prefix]) -> Vec<Ipv4Prefix> {
    let mut out = vec![cidr];
    for x in except {
        let mut next = Vec::new();
        for p in out {
            split_off(p, *x, &mut next);
        }
        out = next;
    }
    out.sort();
    out
}

fn contains(outer: Ipv4Prefix, inner: Ipv4Prefix) -> bool {
    outer.prefix_len() <= inner.prefix_len()
        && u32::from(inner.addr()) & outer.mask() == u32::from(outer.addr())
}

/// Pushes the parts of `p` outside `x`.
fn split_off(p: Ipv4Prefix, x: Ipv4Prefix, out: &mut Vec<Ipv4Prefix>) {
    if contains(x, p) {
        return;
    }
    if !contains(p, x) {
        out.push(p);
        return;
    }
    // x is strictly inside p: keep the half without x, recurse into the other.
    let len = p.prefix_len() + 1;
    let base = u32::from(p.addr());
    let halves = [base, base | (1u32 << (32 - u32::from(len)))];
    for h in halves {
        let half = Ipv4Prefix::new(Ipv4Addr::from(h), len);
        split_off(half, x, out);
    }
}

/// `first..=last` as (value, mask) pairs of 16-bit ports, the fewest
/// aligned blocks that cover exactly the range.
pub fn port_masks(first: u16, last: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 { 1u32 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let mask = (!(size - 1) & 0xffff) as u16;
        out.push((lo as u16, mask));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        Ipv4Prefix::new(a.parse().expect("addr"), l.parse().expect("len"))
    }

    fn covers(set: &[Ipv4Prefix], a: Ipv4Addr) -> bool {
        set.iter().any(|x| contains(*x, Ipv4Prefix::host(a)))
    }

    #[test]
    fn an_ip_block_minus_its_exceptions_covers_exactly_the_rest() {
        let cidr = p("10.0.0.0/16");
        let except = [p("10.0.1.0/24"), p("10.0.200.128/25"), p("10.0.0.7")];
        let set = subtract(cidr, &except);
        // Every address of a /16 checked against the definition.
        for i in 0..=0xffffu32 {
            let a = Ipv4Addr::from(0x0a00_0000 | i);
            let want = !except.iter().any(|x| contains(*x, Ipv4Prefix::host(a)));
            assert_eq!(covers(&set, a), want, "{a}");
        }
        assert!(set.len() <= 16 + 8 + 32, "{} prefixes", set.len());
        assert_eq!(subtract(cidr, &[]), vec![cidr]);
        assert_eq!(subtract(cidr, &[cidr]), vec![]);
        assert_eq!(
            subtract(cidr, &[p("192.168.0.0/16")]),
            vec![cidr],
            "an exception outside changes nothing"
        );
        assert_eq!(subtract(p("0.0.0.0/0"), &[p("128.0.0.0/1")]), vec![p("0.0.0.0/1")]);
    }

    #[test]
    fn a_port_range_is_the_masked_blocks_that_cover_it() {
        for (first, last) in [(80, 80), (8000, 8080), (0, 65535), (1, 1023), (32000, 32768), (65534, 65535)] {
            let blocks = port_masks(first, last);
            for port in 0..=65535u16 {
                let hit = blocks.iter().filter(|(v, m)| port & m == *v).count();
                assert_eq!(hit, usize::from(port >= first && port <= last), "{first}-{last}: {port}");
            }
        }
        assert_eq!(port_masks(80, 80), vec![(80, 0xffff)]);
        assert_eq!(port_masks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_masks(8000, 8080), vec![(8000, 0xffc0), (8064, 0xfff0), (8080, 0xffff)]);
        assert!(port_masks(2, 1).is_empty());
    }
}
