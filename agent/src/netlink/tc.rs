//! Traffic-control primitives over rtnetlink (no `tc` process): qdiscs by
//! raw message (rtnetlink has no builder for most kinds), the ingress qdisc,
//! a u32 match-all redirect filter, and ifb devices. What to install where
//! is `bandwidth::tc`'s business.

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option, TcHandle,
    TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::LinkIfb;

use super::{nl_err, Netlink, NetlinkError};

/// `ETH_P_ALL` in network byte order, as a filter's protocol must be given
/// (the host-order 3 matches nothing).
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// Priority of the redirect filter (the only filter this module installs).
const REDIRECT_PRIORITY: u16 = 1;

/// A qdisc as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub parent: TcHandle,
    pub handle: TcHandle,
    /// `TCA_OPTIONS` of kinds netlink-packet-route does not know, as the
    /// raw nested attributes (e.g. tbf's parameters).
    pub raw_options: Option<Vec<u8>>,
}

impl Qdisc {
    fn from_message(m: &TcMessage) -> Qdisc {
        let mut q = Qdisc {
            kind: String::new(),
            parent: m.header.parent,
            handle: m.header.handle,
            raw_options: None,
        };
        for attr in &m.attributes {
            match attr {
                TcAttribute::Kind(k) => q.kind = k.clone(),
                TcAttribute::Options(opts) => {
                    // An unknown kind's options arrive as one opaque
                    // attribute holding the nest's payload.
                    if let [TcOption::Other(nla)] = opts.as_slice() {
                        use rtnetlink::packet_core::Nla;
                        let mut buf = vec![0; nla.value_len()];
                        nla.emit_value(&mut buf);
                        q.raw_options = Some(buf);
                    }
                }
                _ => {}
            }
        }
        q
    }

    /// The root qdisc of a device (not the ingress hook).
    pub fn is_root(&self) -> bool {
        self.parent == TcHandle::ROOT
    }

    pub fn is_ingress(&self) -> bool {
        self.kind == "ingress" && self.parent == TcHandle::INGRESS
    }
}

impl Netlink {
    /// Sends one tc request and waits for the kernel's answer.
    async fn tc_request(&self, msg: RouteNetlinkMessage, flags: u16, op: String) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req).map_err(nl_err(op.clone()))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                if e.code.is_some() {
                    return Err(NetlinkError::Netlink { op, source: rtnetlink::Error::NetlinkError(e) });
                }
            }
        }
        Ok(())
    }

    /// The qdiscs of the link with `index` (root, children and ingress).
    pub async fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let all: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list qdiscs of link {index}")))?;
        // The kernel may dump every device's qdiscs: keep this link's.
        Ok(all.iter().filter(|m| m.header.index == index as i32).map(Qdisc::from_message).collect())
    }

    /// Creates or replaces the root qdisc of a link: `kind` with `options`
    /// (the raw TCA_OPTIONS nest's attributes).
    pub async fn replace_root_qdisc(
        &self,
        index: u32,
        kind: &str,
        options: Vec<TcOption>,
    ) -> Result<(), NetlinkError> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::ROOT;
        m.attributes.push(TcAttribute::Kind(kind.to_string()));
        m.attributes.push(TcAttribute::Options(options));
        self.tc_request(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("replace root qdisc {kind} of link {index}"),
        )
        .await
    }

    /// Deletes the root qdisc (the device falls back to its default) or
    /// the ingress qdisc with its filters. Returns whether one was there.
    pub async fn del_qdisc(&self, index: u32, parent: TcHandle) -> Result<bool, NetlinkError> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = parent;
        if parent == TcHandle::INGRESS {
            m.header.handle = TcHandle::from(0xffff_0000);
        }
        match self
            .tc_request(
                RouteNetlinkMessage::DelQueueDiscipline(m),
                0,
                format!("delete qdisc of link {index}"),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENODEV)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds the ingress qdisc to a link; one already there is success.
    pub async fn ensure_ingress_qdisc(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.qdisc().add(index as i32).ingress().execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Ok(()),
            Err(e) => Err(nl_err(format!("add ingress qdisc to link {index}"))(e)),
        }
    }

    /// Link indexes that the ingress hook of link `index` redirects to with
    /// a u32 filter and a mirred action.
    pub async fn ingress_redirects(&self, index: u32) -> Result<Vec<u32>, NetlinkError> {
        let filters: Vec<TcMessage> =
            match self.handle.traffic_filter(index as i32).get().ingress().execute().try_collect().await {
                Ok(f) => f,
                // No ingress qdisc, so no filters.
                Err(rtnetlink::Error::NetlinkError(m))
                    if matches!(-m.raw_code(), libc::EINVAL | libc::ENOENT) =>
                {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(nl_err(format!("list ingress filters of link {index}"))(e)),
            };
        let mut targets = Vec::new();
        for f in &filters {
            for attr in &f.attributes {
                let TcAttribute::Options(opts) = attr else { continue };
                for opt in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else { continue };
                    for action in actions {
                        for a in &action.attributes {
                            let TcActionAttribute::Options(aopts) = a else { continue };
                            for o in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o {
                                    targets.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(targets)
    }

    /// Adds to the ingress hook of link `index` a u32 filter matching every
    /// frame with a mirred action redirecting it to the egress of link
    /// `target` (`tc filter add dev X parent ffff: protocol all u32 match
    /// u32 0 0 action mirred egress redirect dev T`). Needs the ingress qdisc.
    pub async fn add_ingress_redirect(&self, index: u32, target: u32) -> Result<(), NetlinkError> {
        let op = format!("add redirect filter link {index} -> link {target}");
        let req = self
            .handle
            .traffic_filter(index as i32)
            .add()
            .ingress()
            .priority(REDIRECT_PRIORITY)
            .protocol(ETH_P_ALL_BE)
            .redirect(target)
            .map_err(nl_err(op.clone()))?;
        req.execute().await.map_err(nl_err(op))
    }

    /// Creates an ifb device (down); one already there is success.
    pub async fn ensure_ifb(&self, name: &str) -> Result<(), NetlinkError> {
        match self.handle.link().add(LinkIfb::new(name).build()).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Ok(()),
            Err(e) => Err(nl_err(format!("create ifb {name}"))(e)),
        }
    }
}
