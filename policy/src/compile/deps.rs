//! What a compiled program depends on, tracked across compiles, so a change rebuilds only the programs it
//! touches.
//!
//! A program is built from the policies that select its endpoint (their rules, not their selectors or
//! orders: which policies select and in what order is part of the program's key already), its profiles, and
//! the address and named-port sets its rules' selectors resolve to. Those sets are *atoms*: a selector, or
//! the named ports of the entities a selector (or nothing) picks. Each atom has a version that changes when
//! an entity it can see is added, removed or changed; a program's key hashes the versions of the atoms its
//! rules use. An entity change is then found by comparing the entities' hashes with the previous compile's,
//! and tested against each atom once, instead of rebuilding every program because some entity changed.

use foldhash::{HashMap, HashMapExt};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::resolve::{Direction, Entity, ResolvedNode};
use crate::resource::{Policy, Port, Protocol, Rule};
use crate::selector::Selector;

/// A set a rule resolves through the entities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Atom {
    /// The addresses of the entities a selector matches.
    Addresses(Selector),
    /// The (address, protocol, port) of the named ports `names` of the entities a selector (all if none)
    /// matches, for a rule of that protocol (`SetResolver::named_ports`).
    NamedPorts(Vec<String>, Option<Selector>, Option<Protocol>),
}

impl Atom {
    /// Whether `e` is among what the atom resolves over: a change to such an entity may change the set.
    fn sees(&self, e: &Entity) -> bool {
        match self {
            Atom::Addresses(sel) => sel.matches(&e.labels),
            Atom::NamedPorts(names, sel, _) => {
                sel.as_ref().is_none_or(|s| s.matches(&e.labels)) && e.ports.iter().any(|p| names.contains(&p.name))
            }
        }
    }
}

fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = super::hasher();
    v.hash(&mut h);
    h.finish()
}

/// The atoms of `rules`, in rule order (duplicates kept: the order is part of nothing, only the versions).
fn atoms_of(rules: &[Rule]) -> Vec<Atom> {
    let mut out = Vec::new();
    for rule in rules {
        for side in [&rule.source, &rule.destination] {
            if let Some(s) = &side.selector {
                out.push(Atom::Addresses(s.clone()));
            }
            if let Some(s) = &side.not_selector {
                out.push(Atom::Addresses(s.clone()));
            }
            for list in [&side.ports, &side.not_ports] {
                let names: Vec<String> = list
                    .iter()
                    .filter_map(|p| match p {
                        Port::Named(n) => Some(n.clone()),
                        Port::Range(..) => None,
                    })
                    .collect();
                if !names.is_empty() {
                    out.push(Atom::NamedPorts(names, side.selector.clone(), rule.protocol));
                }
            }
        }
    }
    out
}

/// What one policy contributes to a program key: its walk's contents and the atoms of each direction.
#[derive(Debug)]
struct PolicyDeps {
    /// Pins the address the cache is keyed by.
    _policy: Arc<Policy>,
    /// Everything of the policy a flattened walk reads (not its selector nor its order).
    contents: u64,
    /// Atom ids, `[ingress, egress]`.
    atoms: [Vec<u32>; 2],
}

/// Atom versions and per-policy dependencies, kept across compiles.
#[derive(Debug, Default)]
pub struct DepTracker {
    atom_ids: HashMap<Atom, u32>,
    atoms: Vec<Atom>,
    /// Version of each atom by id; versions are never reused, so a key with a stale version cannot match.
    versions: Vec<u64>,
    next_version: u64,
    /// Policies by identity (`Arc` address): an unchanged policy is shared between resource-set versions.
    policies: HashMap<usize, PolicyDeps>,
    /// The entities of the previous compile by content hash, with how many of each.
    entities: HashMap<u64, (usize, Arc<Entity>)>,
}

/// Once this many atoms are known but no policy uses them, the tracker starts over (programs are rebuilt
/// once): the table of atoms stays bounded however long selectors churn.
const ATOM_GARBAGE: usize = 4096;

/// The dependencies of one compile, read by [`DepTracker::program_key`].
pub struct Deps<'t> {
    tracker: &'t DepTracker,
    /// Per policy of the world (same index), its entry in `tracker.policies`.
    policies: Vec<usize>,
    profiles: HashMap<String, (u64, [Vec<u32>; 2])>,
    services: u64,
}

impl DepTracker {
    fn intern(&mut self, atom: Atom) -> u32 {
        if let Some(&id) = self.atom_ids.get(&atom) {
            return id;
        }
        let id = self.atoms.len() as u32;
        self.next_version += 1;
        self.atoms.push(atom.clone());
        self.versions.push(self.next_version);
        self.atom_ids.insert(atom, id);
        id
    }

    fn start_over(&mut self) {
        let next_version = self.next_version;
        *self = DepTracker { next_version, ..DepTracker::default() };
    }

    /// Brings atom versions up to `world`'s entities and collects its policies' and profiles' dependencies.
    pub fn update<'t>(&'t mut self, world: &ResolvedNode) -> Deps<'t> {
        // Entities that differ from the previous compile's (added, removed or changed: both versions).
        let mut next: HashMap<u64, (usize, Arc<Entity>)> = HashMap::with_capacity(world.entities.len());
        for e in &world.entities {
            let h = hash_of(&(&e.labels, &e.nets, &e.ports));
            next.entry(h).or_insert_with(|| (0, e.clone())).0 += 1;
        }
        let mut changed: Vec<&Entity> = Vec::new();
        for (h, (n, e)) in &next {
            if self.entities.get(h).is_none_or(|(m, _)| m != n) {
                changed.push(e);
            }
        }
        for (h, (_, e)) in &self.entities {
            if !next.contains_key(h) {
                changed.push(e);
            }
        }
        if !changed.is_empty() {
            for (id, atom) in self.atoms.iter().enumerate() {
                if changed.iter().any(|e| atom.sees(e)) {
                    self.next_version += 1;
                    self.versions[id] = self.next_version;
                }
            }
        }
        drop(changed);
        self.entities = next;

        // Policies: known ones by identity, new ones hashed and their atoms interned.
        let mut keep: HashMap<usize, PolicyDeps> = HashMap::with_capacity(world.policies.len());
        let mut order = Vec::with_capacity(world.policies.len());
        for p in world.policies.iter() {
            let at = Arc::as_ptr(p) as usize;
            let deps = match self.policies.remove(&at).or_else(|| keep.remove(&at)) {
                Some(d) => d,
                None => {
                    let contents = hash_of(&(
                        &p.id,
                        &p.tier,
                        (p.applies_ingress, p.applies_egress, p.do_not_track, p.pre_dnat, p.apply_on_forward),
                        &p.ingress,
                        &p.egress,
                    ));
                    let atoms = [Direction::Ingress, Direction::Egress]
                        .map(|d| atoms_of(p.rules(d)).into_iter().map(|a| self.intern(a)).collect());
                    PolicyDeps { _policy: p.clone(), contents, atoms }
                }
            };
            keep.insert(at, deps);
            order.push(at);
        }
        self.policies = keep;
        let used = self.policies.values().flat_map(|d| d.atoms.iter().flatten()).count();
        if self.atoms.len() > used + ATOM_GARBAGE {
            self.start_over();
            return self.update(world);
        }
        let mut profiles = HashMap::with_capacity(world.profiles.len());
        for (name, profile) in world.profiles.iter() {
            let atoms = [Direction::Ingress, Direction::Egress]
                .map(|d| atoms_of(profile.rules(d)).into_iter().map(|a| self.intern(a)).collect());
            profiles.insert(name.clone(), (hash_of(profile), atoms));
        }
        Deps { tracker: self, policies: order, profiles, services: hash_of(&world.node.services) }
    }
}

impl DepTracker {
    /// A program's key: what it is built from apart from set contents (`structure`), and the versions of the
    /// atoms it reads.
    pub fn key(&self, structure: u64, atoms: &[u32]) -> u64 {
        let mut h = super::hasher();
        structure.hash(&mut h);
        for &a in atoms {
            self.versions[a as usize].hash(&mut h);
        }
        h.finish()
    }

    /// The atoms `rules` read, interned: what a program spliced with them depends on (it has no key).
    pub fn rule_atoms(&mut self, rules: &[Rule]) -> Vec<u32> {
        atoms_of(rules).into_iter().map(|a| self.intern(a)).collect()
    }

    /// Takes entities `removed` out of and `added` into the previous compile's (nothing else changed) and
    /// bumps the versions of the atoms that can see one of them. Returns the address sets (selectors) whose
    /// atoms were bumped and whether a named-port atom was.
    pub fn change_entities(&mut self, removed: &[Entity], added: &[Entity]) -> (Vec<u32>, Vec<Selector>, bool) {
        for e in removed {
            let h = hash_of(&(&e.labels, &e.nets, &e.ports));
            if let Some(entry) = self.entities.get_mut(&h) {
                entry.0 -= 1;
                if entry.0 == 0 {
                    self.entities.remove(&h);
                }
            }
        }
        for e in added {
            let h = hash_of(&(&e.labels, &e.nets, &e.ports));
            self.entities.entry(h).or_insert_with(|| (0, Arc::new(e.clone()))).0 += 1;
        }
        let mut bumped = Vec::new();
        let mut selectors = Vec::new();
        let mut named_ports = false;
        for (id, atom) in self.atoms.iter().enumerate() {
            if removed.iter().chain(added).any(|e| atom.sees(e)) {
                self.next_version += 1;
                self.versions[id] = self.next_version;
                bumped.push(id as u32);
                match atom {
                    Atom::Addresses(sel) => selectors.push(sel.clone()),
                    Atom::NamedPorts(..) => named_ports = true,
                }
            }
        }
        (bumped, selectors, named_ports)
    }
}

impl<'t> Deps<'t> {
    /// Hashes what policy `i` of the world contributes to a program of direction `d` apart from set contents,
    /// and appends the atoms it reads.
    pub fn policy(&self, i: usize, d: Direction, h: &mut impl Hasher, atoms: &mut Vec<u32>) {
        let deps = &self.tracker.policies[&self.policies[i]];
        deps.contents.hash(h);
        atoms.extend_from_slice(&deps.atoms[super::dir_index(d)]);
    }

    /// [`Deps::policy`] for profile `name` (a missing profile denies).
    pub fn profile(&self, name: &str, d: Direction, h: &mut impl Hasher, atoms: &mut Vec<u32>) {
        match self.profiles.get(name) {
            Some((contents, ids)) => {
                (name, contents).hash(h);
                atoms.extend_from_slice(&ids[super::dir_index(d)]);
            }
            None => (name, "missing").hash(h),
        }
    }

    /// A program's key (`DepTracker::key`).
    pub fn key(&self, structure: u64, atoms: &[u32]) -> u64 {
        self.tracker.key(structure, atoms)
    }

    /// What every program depends on: the services `destination.services` rules resolve through.
    pub fn services(&self) -> u64 {
        self.services
    }
}
