//! Routes: which interface and next hop a translated datagram leaves by.

use std::net::Ipv4Addr;

use vipgate_nat::policy::Ipv4Net;
use vipgate_nat::Side;

/// One route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destinations it covers.
    pub net: Ipv4Net,
    /// The interface, by index.
    pub iface: usize,
    /// The next hop; `None` for a connected subnet (the destination itself).
    pub via: Option<Ipv4Addr>,
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The egress interface, by index.
    pub iface: usize,
    /// The address whose MAC the frame is sent to.
    pub addr: Ipv4Addr,
}

/// The routing table: longest prefix first. A gateway has a handful of routes, so a scan of
/// a short sorted array beats any trie here.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<(Route, Side)>,
}

impl Routes {
    /// A table of `routes`; `side_of(iface)` gives each interface's side.
    pub fn new(routes: &[Route], side_of: impl Fn(usize) -> Option<Side>) -> Routes {
        let mut routes: Vec<(Route, Side)> = routes
            .iter()
            .filter_map(|r| side_of(r.iface).map(|s| (*r, s)))
            .collect();
        // Stable: among equal prefixes the configured order decides.
        routes.sort_by_key(|(r, _)| std::cmp::Reverse(r.net.len));
        Routes { routes }
    }

    /// The route for `dst` among the interfaces of `side` (the engine has already decided
    /// which side a translated datagram leaves by).
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr, side: Side) -> Option<NextHop> {
        self.routes
            .iter()
            .find(|(r, s)| *s == side && r.net.contains(dst))
            .map(|(r, _)| NextHop {
                iface: r.iface,
                addr: r.via.unwrap_or(dst),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(a: [u8; 4], len: u8) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::from(a), len).unwrap()
    }

    #[test]
    fn longest_prefix_on_the_asked_side_wins() {
        let routes = Routes::new(
            &[
                Route {
                    net: net([0, 0, 0, 0], 0),
                    iface: 0,
                    via: Some(Ipv4Addr::new(203, 0, 113, 254)),
                },
                Route {
                    net: net([203, 0, 113, 0], 24),
                    iface: 0,
                    via: None,
                },
                Route {
                    net: net([198, 18, 0, 0], 24),
                    iface: 1,
                    via: None,
                },
                Route {
                    net: net([198, 19, 0, 0], 16),
                    iface: 1,
                    via: Some(Ipv4Addr::new(198, 18, 0, 254)),
                },
            ],
            |i| [Side::Public, Side::Private].get(i).copied(),
        );
        let hop = |a: [u8; 4], s| routes.lookup(Ipv4Addr::from(a), s);
        assert_eq!(
            hop([198, 51, 100, 7], Side::Public),
            Some(NextHop {
                iface: 0,
                addr: Ipv4Addr::new(203, 0, 113, 254)
            })
        );
        assert_eq!(
            hop([203, 0, 113, 7], Side::Public),
            Some(NextHop {
                iface: 0,
                addr: Ipv4Addr::new(203, 0, 113, 7)
            })
        );
        assert_eq!(
            hop([198, 18, 0, 10], Side::Private),
            Some(NextHop {
                iface: 1,
                addr: Ipv4Addr::new(198, 18, 0, 10)
            })
        );
        assert_eq!(
            hop([198, 19, 4, 4], Side::Private),
            Some(NextHop {
                iface: 1,
                addr: Ipv4Addr::new(198, 18, 0, 254)
            })
        );
        // The private side has no default route.
        assert_eq!(hop([198, 51, 100, 7], Side::Private), None);
    }
}
