//! A per-thread memo of policy walks. A compiled program's answer is a pure function of the program and
//! the packet's flow key, so a walk already done for this key under this table version is looked up, not
//! redone. It matters where conntrack does not short-cut policy: a flow that has seen no reply yet (one-way
//! UDP: syslog, metrics, a flood) is NEW for every packet, in Linux as here, and every packet is decided by
//! policy again. Log rules are remembered with the answer and reported again on every hit, as iptables
//! logs every packet that crosses a LOG rule.
//!
//! Direct-mapped: a newer key replaces an older one in its slot, and only keys walked twice recently are
//! admitted, so many one-off flows do not evict the heavy ones or pay for stores. The table set's generation (unique in the process) is part of
//! the key, so a publication invalidates every entry at once, and a program's address is never mistaken
//! for a freed one's (a later table set carries a later generation). Per thread (each worker has its own), so it
//! takes no lock; it lives in the thread's static storage.

use std::cell::RefCell;

use calxdp_policy::compile::classifier::FlowKey;
use calxdp_policy::compile::{Program, ProgramEnd};

use crate::log::MAX_LOGS;

const SLOTS: usize = 512;
/// Bits of the admission filter: a key gets a slot only when its bit shows it was walked recently, so a
/// stream of ever-new flows (each walked once) costs a bit, not a slot overwrite.
const SEEN_BITS: usize = 8192;

#[derive(Clone, Copy)]
struct Entry {
    program: usize,
    generation: u64,
    key: FlowKey,
    end: ProgramEnd,
    /// The Log rules reported, and whether each matched.
    logs: [(u32, bool); MAX_LOGS],
    log_count: u8,
}

struct WalkCache {
    slots: [Option<Entry>; SLOTS],
    seen: [u64; SEEN_BITS / 64],
    hits: u64,
    misses: u64,
}

thread_local! {
    // Initialised by a constant, so a use is a plain thread-local access (no first-use check per walk).
    static CACHE: RefCell<WalkCache> =
        const { RefCell::new(WalkCache { slots: [None; SLOTS], seen: [0; SEEN_BITS / 64], hits: 0, misses: 0 }) };
}

/// The key's hash: the low bits pick its slot, the high bits its admission bit.
fn hash_of(program: usize, key: &FlowKey) -> u64 {
    let mut h = program as u64 ^ u64::from(key.proto) << 48;
    for w in [key.src_ip as u64, (key.src_ip >> 64) as u64, key.dst_ip as u64, (key.dst_ip >> 64) as u64] {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h ^= u64::from(key.src_port) << 32 | u64::from(key.dst_port);
    h = (h ^ u64::from(key.icmp)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// `program.evaluate(key, on_log)` (with `reaching`, `program.evaluate_reaching`: Log rules passed without a
/// match too; a table version either always asks for them or never), remembered for (program,
/// `generation`, key).
pub fn evaluate(
    program: &Program,
    generation: u64,
    key: &FlowKey,
    reaching: bool,
    mut on_log: impl FnMut(u32, bool),
) -> ProgramEnd {
    let addr = program as *const Program as usize;
    let hash = hash_of(addr, key);
    let slot = hash as usize & (SLOTS - 1);
    let bit = (hash >> 40) as usize & (SEEN_BITS - 1);
    let hit = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        match c.slots[slot] {
            Some(e) if e.program == addr && e.generation == generation && e.key == *key => {
                c.hits += 1;
                Some(e)
            }
            _ => {
                c.misses += 1;
                None
            }
        }
    });
    if let Some(e) = hit {
        for &(rule, matched) in &e.logs[..e.log_count as usize] {
            on_log(rule, matched);
        }
        return e.end;
    }
    let mut logs = [(0u32, false); MAX_LOGS];
    let mut log_count = 0usize;
    let mut overflow = false;
    let mut note = |rule: u32, matched: bool| {
        if log_count < MAX_LOGS {
            logs[log_count] = (rule, matched);
            log_count += 1;
        } else {
            overflow = true;
        }
        on_log(rule, matched);
    };
    let end = if reaching {
        program.evaluate_reaching(key, &mut note)
    } else {
        program.evaluate(key, |rule| note(rule, true))
    };
    if !overflow {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let (word, mask) = (bit / 64, 1u64 << (bit % 64));
            if c.seen[word] & mask != 0 {
                c.seen[word] &= !mask;
                c.slots[slot] =
                    Some(Entry { program: addr, generation, key: *key, end, logs, log_count: log_count as u8 });
            } else {
                c.seen[word] |= mask;
            }
        });
    }
    end
}

/// This thread's hits and misses so far.
pub fn stats() -> (u64, u64) {
    CACHE.with(|c| {
        let c = c.borrow();
        (c.hits, c.misses)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calxdp_policy::compile::{flow_key, ProgramCache};
    use calxdp_policy::ids::EndpointRef;
    use calxdp_policy::node::NodeConfig;
    use calxdp_policy::packet::PacketHeader;
    use calxdp_policy::resolve::{Direction, ResolvedNode, Stage};
    use calxdp_policy::resource::{load_text, Protocol, ResourceSet};
    use calxdp_policy::yaml::{parse_documents, Field, Origin};

    const NODE: &str = "name: n\nnamespaces: [{name: default, labels: {}}]\nworkloads:\n  - {name: a, namespace: default, interface: calia, ips: [192.168.1.10], labels: {app: a}}\n";
    const POLICY: &str = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  selector: app == 'a'\n  types: [Ingress]\n  ingress:\n    - {action: Log, protocol: UDP}\n    - {action: Allow, protocol: UDP, destination: {ports: [53]}}\n    - {action: Deny}\n";

    #[test]
    fn a_hit_gives_the_walk_answer_and_its_log_rules_and_a_new_generation_misses() {
        let origin = Origin::file("node.yaml");
        let docs = parse_documents(NODE, &origin).unwrap();
        let node = NodeConfig::parse(Field::root(&docs[0], &origin)).unwrap();
        let mut set = ResourceSet::new();
        set.apply_all(load_text(POLICY, &Origin::file("p.yaml")).unwrap().into_iter().map(|d| d.resource));
        let world = ResolvedNode::new(&node, &set);
        let tables = ProgramCache::new().compile(&world, 1);
        let prog = tables.program(EndpointRef::Workload(0), Stage::Normal, Direction::Ingress).unwrap();
        let mut h = PacketHeader {
            src: "10.0.0.1".parse().unwrap(),
            dst: "192.168.1.10".parse().unwrap(),
            protocol: Protocol::UDP,
            src_port: 4000,
            dst_port: 53,
            ..PacketHeader::EMPTY
        };
        for dport in [53u16, 54] {
            h.dst_port = dport;
            let key = flow_key(&h);
            let mut direct_logs = Vec::new();
            let direct = prog.evaluate(&key, |r| direct_logs.push(r));
            let before = stats();
            for round in 0..3 {
                let mut logs = Vec::new();
                assert_eq!(evaluate(prog, 7_000_000, &key, false, |r, _| logs.push(r)), direct, "round {round}");
                assert_eq!(logs, direct_logs, "log rules reported on every hit");
            }
            let after = stats();
            assert_eq!((after.0 - before.0, after.1 - before.1), (1, 2), "two misses (admission), then hits");
            let _ = evaluate(prog, 7_000_001, &key, false, |_, _| {});
            assert_eq!(stats().1, after.1 + 1, "another table generation misses");
        }
    }
}
