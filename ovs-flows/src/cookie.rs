//! Flow cookies: who owns a flow and in which round it was written.
//!
//! Layout (most significant first), as Antrea does it:
//! `round (16) | category (8) | tag (8) | object id (32)`.
//! The tag byte is a fixed marker ([`Cookie::TAG`]) so that "all flows of
//! k8s-ovs" is one cookie/mask pair the switch can filter on, and flows other
//! programs put on the bridge (cookie 0 and the like) are never ours.

use std::fmt;

value_enum! {
/// What kind of object a flow belongs to. The lead may add variants; values
/// are part of the wire format of installed flows, so never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category: u8 {
    /// Flows that exist once per node whatever the state (table defaults).
    Pipeline = 1,
    /// Flows of one local pod; object = the pod's ofport.
    Pod = 2,
    /// Flows of one remote node; object = its IPv4 address as u32.
    RemoteNode = 3,
    /// Flows of one namespace (VNI); object = the VNI.
    Namespace = 4,
    /// Flows of one service; object = a service id chosen by the caller.
    Service = 5,
    /// Flows of this node itself (gateway, local subnet); object = 0.
    Node = 6,
    /// Flows of one namespace on this node (its VNI); object = the node's
    /// namespace id for it.
    NamespaceId = 7,
    /// The node's NetworkPolicy flows (conjunctions, isolated pods); object = 0.
    Policy = 8,
    /// Flows written by the benchmarks and tests.
    Test = 0xfe,
}
}

/// An OpenFlow cookie with the k8s-ovs layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cookie(pub u64);

const ROUND_SHIFT: u32 = 48;
const CATEGORY_SHIFT: u32 = 40;
const TAG_SHIFT: u32 = 32;

impl Cookie {
    /// Marker in the tag byte of every cookie k8s-ovs writes ('K').
    pub const TAG: u8 = 0x4b;
    pub const ROUND_MASK: u64 = 0xffff << ROUND_SHIFT;
    pub const CATEGORY_MASK: u64 = 0xff << CATEGORY_SHIFT;
    pub const TAG_MASK: u64 = 0xff << TAG_SHIFT;
    pub const OBJECT_MASK: u64 = 0xffff_ffff;
    /// Mask for "owner" = category + tag + object, any round.
    pub const OWNER_MASK: u64 = Self::CATEGORY_MASK | Self::TAG_MASK | Self::OBJECT_MASK;

    pub fn new(round: u16, category: Category, object: u32) -> Cookie {
        Cookie(
            (u64::from(round) << ROUND_SHIFT)
                | (u64::from(category as u8) << CATEGORY_SHIFT)
                | (u64::from(Self::TAG) << TAG_SHIFT)
                | u64::from(object),
        )
    }

    pub fn round(self) -> u16 {
        (self.0 >> ROUND_SHIFT) as u16
    }

    /// The category, if the byte holds a known one.
    pub fn category(self) -> Option<Category> {
        Category::from_repr((self.0 >> CATEGORY_SHIFT) as u8)
    }

    pub fn object(self) -> u32 {
        self.0 as u32
    }

    /// Whether k8s-ovs wrote this cookie (the tag byte is ours).
    pub fn is_ours(self) -> bool {
        (self.0 >> TAG_SHIFT) as u8 == Self::TAG
    }

    /// The same owner in another round.
    pub fn with_round(self, round: u16) -> Cookie {
        Cookie((self.0 & !Self::ROUND_MASK) | (u64::from(round) << ROUND_SHIFT))
    }

    /// The owner part (round cleared): equal for all rounds of one object.
    pub fn owner(self) -> u64 {
        self.0 & Self::OWNER_MASK
    }
}

impl From<u64> for Cookie {
    fn from(v: u64) -> Cookie {
        Cookie(v)
    }
}

impl From<Cookie> for u64 {
    fn from(c: Cookie) -> u64 {
        c.0
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A cookie value plus mask, as FLOW_MOD delete and flow stats requests take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CookieFilter {
    pub cookie: u64,
    pub mask: u64,
}

impl CookieFilter {
    /// Matches every flow.
    pub const ANY: CookieFilter = CookieFilter { cookie: 0, mask: 0 };

    /// Exactly this cookie.
    pub fn exact(c: Cookie) -> CookieFilter {
        CookieFilter { cookie: c.0, mask: u64::MAX }
    }

    /// Every flow k8s-ovs wrote, any round or owner.
    pub fn ours() -> CookieFilter {
        CookieFilter { cookie: u64::from(Cookie::TAG) << TAG_SHIFT, mask: Cookie::TAG_MASK }
    }

    /// Every k8s-ovs flow of round `round`.
    pub fn round(round: u16) -> CookieFilter {
        CookieFilter {
            cookie: (u64::from(round) << ROUND_SHIFT) | (u64::from(Cookie::TAG) << TAG_SHIFT),
            mask: Cookie::ROUND_MASK | Cookie::TAG_MASK,
        }
    }

    /// Every flow of one owner (category + object), any round.
    pub fn owner(category: Category, object: u32) -> CookieFilter {
        CookieFilter { cookie: Cookie::new(0, category, object).owner(), mask: Cookie::OWNER_MASK }
    }

    /// Every flow of one category, any object or round.
    pub fn category(category: Category) -> CookieFilter {
        CookieFilter {
            cookie: Cookie::new(0, category, 0).0 & (Cookie::CATEGORY_MASK | Cookie::TAG_MASK),
            mask: Cookie::CATEGORY_MASK | Cookie::TAG_MASK,
        }
    }

    pub fn matches(self, c: Cookie) -> bool {
        c.0 & self.mask == self.cookie & self.mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let c = Cookie::new(0x1234, Category::Pod, 0xdead_beef);
        assert_eq!(c.0, 0x1234_024b_dead_beef);
        assert_eq!(c.round(), 0x1234);
        assert_eq!(c.category(), Some(Category::Pod));
        assert_eq!(c.object(), 0xdead_beef);
        assert!(c.is_ours());
        assert_eq!(Cookie::from(u64::from(c)), c);
        assert_eq!(c.with_round(7).round(), 7);
        assert_eq!(c.with_round(7).owner(), c.owner());
        assert_eq!(c.to_string(), "0x1234024bdeadbeef");
    }

    #[test]
    fn filters_select_what_they_say() {
        let pod1 = Cookie::new(3, Category::Pod, 1);
        let pod2 = Cookie::new(3, Category::Pod, 2);
        let node = Cookie::new(4, Category::RemoteNode, 1);
        assert!(CookieFilter::owner(Category::Pod, 1).matches(pod1));
        assert!(CookieFilter::owner(Category::Pod, 1).matches(pod1.with_round(9)));
        assert!(!CookieFilter::owner(Category::Pod, 1).matches(pod2));
        assert!(!CookieFilter::owner(Category::Pod, 1).matches(Cookie::new(3, Category::RemoteNode, 1)));
        assert!(CookieFilter::round(3).matches(pod2));
        assert!(!CookieFilter::round(3).matches(node));
        assert!(CookieFilter::category(Category::Pod).matches(pod2));
        assert!(!CookieFilter::category(Category::Pod).matches(node));
        assert!(CookieFilter::ours().matches(node));
        assert!(!CookieFilter::ours().matches(Cookie(0)));
        assert!(!Cookie(0).is_ours());
        assert!(CookieFilter::ANY.matches(Cookie(0)));
    }

    #[test]
    fn category_bytes_are_stable() {
        for &c in Category::ALL {
            assert_eq!(Category::from_repr(c as u8), Some(c));
        }
        assert_eq!(Category::from_repr(0), None);
    }
}
