//! Does a rule match a packet? Semantics §3 read literally, with rule selectors resolved on the spot against
//! every entity (§2.2). Slow and obviously right: the compiled classifier is checked against this.

use std::net::IpAddr;

use crate::net::IpNet;
use crate::packet::PacketHeader;
use crate::resolve::ResolvedNode;
use crate::resource::{EntityRule, IcmpMatch, Port, Protocol, Rule};
use crate::selector::Selector;

/// Whether `rule` matches `pkt` (all criteria ANDed, semantics §3).
pub fn rule_matches(rule: &Rule, pkt: &PacketHeader, world: &ResolvedNode) -> bool {
    if rule.family().is_some_and(|f| f != pkt.family()) {
        return false;
    }
    if rule.protocol.is_some_and(|p| p != pkt.protocol) {
        return false;
    }
    if rule.not_protocol.is_some_and(|p| p == pkt.protocol) {
        return false;
    }
    if let Some(m) = rule.icmp {
        if !(pkt.is_icmp() && icmp_matches(m, pkt)) {
            return false;
        }
    }
    if let Some(m) = rule.not_icmp {
        if pkt.is_icmp() && icmp_matches(m, pkt) {
            return false;
        }
    }
    side_matches(rule, &rule.source, pkt.src, pkt.src_port, true, pkt, world)
        && side_matches(rule, &rule.destination, pkt.dst, pkt.dst_port, false, pkt, world)
}

fn icmp_matches(m: IcmpMatch, pkt: &PacketHeader) -> bool {
    m.icmp_type == pkt.icmp_type && m.code.is_none_or(|c| c == pkt.icmp_code)
}

/// semantics §3 "IP-family filtering": the list restricted to the packet's family; `None` when the list was
/// non-empty and nothing of the family remains — the whole rule is then absent for this family.
fn family_filtered(list: &[IpNet], pkt: &PacketHeader) -> Option<Vec<IpNet>> {
    let kept: Vec<IpNet> = list.iter().copied().filter(|n| n.family() == pkt.family()).collect();
    if !list.is_empty() && kept.is_empty() {
        None
    } else {
        Some(kept)
    }
}

fn side_matches(
    rule: &Rule,
    side: &EntityRule,
    ip: IpAddr,
    port: u16,
    is_source: bool,
    pkt: &PacketHeader,
    world: &ResolvedNode,
) -> bool {
    let Some(nets) = family_filtered(&side.nets, pkt) else { return false };
    let Some(not_nets) = family_filtered(&side.not_nets, pkt) else { return false };
    if !nets.is_empty() && !nets.iter().any(|n| n.contains(ip)) {
        return false;
    }
    // A negated catch-all makes the rule match nothing (semantics §3 "Negated catch-all").
    if not_nets.iter().any(|n| n.is_catch_all() || n.contains(ip)) {
        return false;
    }
    if let Some(svc) = &side.services {
        let Some(service) = world.node.services.iter().find(|s| s.name == svc.name && s.namespace == svc.namespace)
        else {
            return false;
        };
        let hit = if is_source {
            service.backends.iter().any(|b| b.ip() == ip)
        } else {
            pkt.has_ports()
                && pkt.protocol == service.protocol
                && service.backends.iter().any(|b| b.ip() == ip && b.port() == port)
        };
        if !hit {
            return false;
        }
    }
    if side.has_port_criteria() && !pkt.has_ports() {
        return false;
    }
    let positive = side.selector.as_ref();
    if !side.ports.is_empty() {
        let numeric_hit = side.ports.iter().any(|p| matches!(p, Port::Range(lo, hi) if (*lo..=*hi).contains(&port)));
        let numeric_ok = numeric_hit && positive.is_none_or(|s| ip_selected(s, ip, world));
        let named_ok = side.ports.iter().any(|p| match p {
            Port::Named(name) => named_port_hit(name, positive, rule.protocol, ip, port, pkt.protocol, world),
            Port::Range(..) => false,
        });
        if !(numeric_ok || named_ok) {
            return false;
        }
    } else if let Some(sel) = positive {
        if !ip_selected(sel, ip, world) {
            return false;
        }
    }
    for p in &side.not_ports {
        let excluded = match p {
            Port::Range(lo, hi) => (*lo..=*hi).contains(&port),
            Port::Named(name) => named_port_hit(name, positive, rule.protocol, ip, port, pkt.protocol, world),
        };
        if excluded {
            return false;
        }
    }
    if let Some(neg) = &side.not_selector {
        if ip_selected(neg, ip, world) {
            return false;
        }
    }
    true
}

/// Whether some entity matching `sel` owns `ip` (semantics §2.2: selectors become IP sets).
pub fn ip_selected(sel: &Selector, ip: IpAddr, world: &ResolvedNode) -> bool {
    world.entities.iter().any(|e| e.nets.iter().any(|n| n.contains(ip)) && sel.matches(&e.labels))
}

/// Whether (ip, protocol, port) is a named port `name` of an entity matching `sel` (all entities if none),
/// with a protocol compatible with the rule's (semantics §3 "Named port").
fn named_port_hit(
    name: &str,
    sel: Option<&Selector>,
    rule_protocol: Option<Protocol>,
    ip: IpAddr,
    port: u16,
    pkt_protocol: Protocol,
    world: &ResolvedNode,
) -> bool {
    world.entities.iter().any(|e| {
        e.nets.iter().any(|n| n.contains(ip))
            && e.ports.iter().any(|np| {
                np.name == name
                    && np.port == port
                    && np.protocol == pkt_protocol
                    && rule_protocol.is_none_or(|rp| rp == np.protocol)
            })
            && sel.is_none_or(|s| s.matches(&e.labels))
    })
}
