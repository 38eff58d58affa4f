//! The outbound address policy: which addresses Hearth may connect to when another party
//! chooses the URL (federation peers, `.well-known` and SRV targets, notaries; later media
//! previews and push gateways).
//!
//! A name someone else controls can resolve to anything, including the cluster's own
//! services, the node's kubelet or the router. So every address is checked, and it is
//! checked on the address actually connected to (the resolver hands the HTTP client only
//! the addresses that pass, and IP literals are checked before a request), never on a
//! name. The denylist defaults to the ranges Synapse blocks by default — loopback, RFC 1918,
//! CGNAT, link-local, documentation and benchmarking ranges, multicast, IPv6 loopback,
//! unique-local and link-local — and the unspecified addresses are always refused. The
//! allowlist (`ip_range_allowlist`) admits LAN peers, and loopback in tests; it wins over
//! the denylist. An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4
//! address it is.

use std::net::IpAddr;

use ipnet::IpNet;

/// The ranges refused unless allowed, as Synapse's default `ip_range_blacklist`.
pub const DEFAULT_DENYLIST: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// The default denylist, parsed.
pub fn default_denylist() -> Vec<IpNet> {
    DEFAULT_DENYLIST.iter().filter_map(|r| r.parse().ok()).collect()
}

/// Why an address was refused: names the rule, for the log and the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is an unspecified address")]
    Unspecified(IpAddr),
    #[error("{addr} is in the denied range {range} (ip_range_denylist; admit it with ip_range_allowlist)")]
    Denied { addr: IpAddr, range: IpNet },
}

/// The policy every outbound connection is checked against.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>) -> Self {
        AddressPolicy { deny, allow }
    }

    /// Whether Hearth may connect to `addr`, and if not, which rule refuses it.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        let addr = canonical(addr);
        if self.allow.iter().any(|r| r.contains(&addr)) {
            return Ok(());
        }
        if addr.is_unspecified() {
            return Err(Refused::Unspecified(addr));
        }
        match self.deny.iter().find(|r| r.contains(&addr)) {
            Some(range) => Err(Refused::Denied { addr, range: *range }),
            None => Ok(()),
        }
    }
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|r| r.parse().expect("range")).collect()
    }

    #[test]
    fn default_denylist_refuses_private_and_special_ranges() {
        let policy = AddressPolicy::new(default_denylist(), vec![]);
        assert_eq!(default_denylist().len(), DEFAULT_DENYLIST.len(), "every default range parses");
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.3.10",
            "100.64.1.1",
            "169.254.169.254",
            "198.18.0.1",
            "203.0.113.9",
            "224.0.0.251",
            "::1",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(matches!(policy.check(ip(denied)), Err(Refused::Denied { .. })), "{denied} must be refused");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert_eq!(policy.check(ip(allowed)), Ok(()), "{allowed} is public");
        }
    }

    #[test]
    fn mapped_ipv4_is_judged_as_ipv4() {
        let policy = AddressPolicy::new(default_denylist(), vec![]);
        assert!(policy.check(ip("::ffff:10.0.0.1")).is_err());
        assert!(policy.check(ip("::ffff:127.0.0.1")).is_err());
        assert_eq!(policy.check(ip("::ffff:8.8.8.8")), Ok(()));
    }

    #[test]
    fn unspecified_addresses_are_always_refused_unless_allowed() {
        let policy = AddressPolicy::new(vec![], vec![]);
        assert_eq!(policy.check(ip("0.0.0.0")), Err(Refused::Unspecified(ip("0.0.0.0"))));
        assert_eq!(policy.check(ip("::")), Err(Refused::Unspecified(ip("::"))));
    }

    #[test]
    fn allowlist_admits_lan_peers_and_names_the_refusing_rule() {
        let policy = AddressPolicy::new(default_denylist(), nets(&["192.168.3.0/24", "127.0.0.1/32"]));
        assert_eq!(policy.check(ip("192.168.3.11")), Ok(()));
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        let refused = policy.check(ip("192.168.4.1")).expect_err("outside the allowed LAN");
        assert_eq!(
            refused,
            Refused::Denied { addr: ip("192.168.4.1"), range: "192.168.0.0/16".parse().expect("range") }
        );
        assert!(refused.to_string().contains("192.168.0.0/16"), "{refused}");
        assert!(policy.check(ip("127.0.0.2")).is_err(), "only the allowed address");
    }
}
