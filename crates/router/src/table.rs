//! The routing table: from a ClientHello's server name to a route.
//!
//! Built once per config generation and never changed, so connections read
//! it without locks. A lookup is one hash probe for the exact name, then one
//! probe per dot of the name against the wildcard suffixes, leftmost dot
//! first, so the first hit is the longest (most specific) wildcard. Nothing
//! is allocated per lookup.

use std::collections::HashMap;

use config::{Config, NamePattern};

/// Index of a route in [`Config::routes`].
pub(crate) type RouteId = usize;

/// How a connection was matched to its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MatchKind {
    /// The server name is one of the route's exact names.
    Exact,
    /// The server name ends in one of the route's wildcard suffixes.
    Wildcard,
    /// No SNI, or no route claims the name: the default route.
    Default,
}

impl MatchKind {
    /// A stable label for logs and metrics: `exact`, `wildcard`, `default`.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
            Self::Default => "default",
        }
    }
}

/// Server names and defaults of one config generation.
#[derive(Clone, Debug)]
pub(crate) struct RouteTable {
    /// Exact names, normalised.
    exact: HashMap<Box<str>, RouteId>,
    /// Wildcard suffixes: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Box<str>, RouteId>,
    /// The global default route.
    default: Option<RouteId>,
    /// Each listener's default: its own, else the global one.
    listener_defaults: Vec<Option<RouteId>>,
}

impl RouteTable {
    /// Builds the table of `config`. A validated config claims each name
    /// once; should a hand-built one not, the first route wins, and
    /// default routes that name no route are ignored.
    pub(crate) fn new(config: &Config) -> RouteTable {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut by_name: HashMap<&str, RouteId> = HashMap::new();
        for (id, route) in config.routes.iter().enumerate() {
            by_name.entry(route.name.as_str()).or_insert(id);
            for pattern in &route.server_names {
                let (map, name) = match pattern {
                    NamePattern::Exact(n) => (&mut exact, n),
                    NamePattern::Wildcard(n) => (&mut wildcard, n),
                };
                map.entry(name.as_str().into()).or_insert(id);
            }
        }
        let find = |name: &Option<String>| name.as_deref().and_then(|n| by_name.get(n).copied());
        let default = find(&config.default_route);
        let listener_defaults = config
            .listeners
            .iter()
            .map(|l| find(&l.default_route).or(default))
            .collect();
        RouteTable {
            exact,
            wildcard,
            default,
            listener_defaults,
        }
    }

    /// The route for `server_name` (already normalised: lower case, no
    /// trailing dot, as [`clienthello::ServerName`] gives it) on the
    /// listener with index `listener` in [`Config::listeners`]: an exact
    /// name first, else the longest matching wildcard, else that listener's
    /// default route, else the global default. `None` when nothing applies:
    /// the connection is refused. This is the one place defaults are
    /// resolved.
    pub(crate) fn lookup(
        &self,
        server_name: Option<&str>,
        listener: Option<usize>,
    ) -> Option<(RouteId, MatchKind)> {
        if let Some(name) = server_name {
            if let Some(&id) = self.exact.get(name) {
                return Some((id, MatchKind::Exact));
            }
            if !self.wildcard.is_empty() {
                // `a.b.example.com` tries `b.example.com`, then
                // `example.com`, then `com`: longest suffix first.
                for (i, b) in name.bytes().enumerate() {
                    if b == b'.' {
                        if let Some(&id) = self.wildcard.get(&name[i + 1..]) {
                            return Some((id, MatchKind::Wildcard));
                        }
                    }
                }
            }
        }
        listener
            .and_then(|i| self.listener_defaults.get(i).copied())
            .unwrap_or(self.default)
            .map(|id| (id, MatchKind::Default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = r#"
listeners:
  - "127.0.0.1:6443"
  - {address: "[::1]:6443", default_route: wild}
  - "127.0.0.1:7443"
routes:
  - name: exact
    server_names: ["api.example.com", "API.Other.Example.", "*.other.example"]
    upstreams: ["10.0.0.1:6443"]
  - name: wild
    server_names: ["*.Example.COM"]
    upstreams: ["10.0.0.2:6443"]
  - name: deeper
    server_names: ["*.staging.example.com"]
    upstreams: ["10.0.0.3:6443"]
"#;

    fn table(extra: &str) -> RouteTable {
        RouteTable::new(&config(&format!("{ROUTES}{extra}")))
    }

    #[test]
    fn exact_beats_wildcard() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("api.example.com"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("web.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        // An exact name beats the same route's or another's wildcard.
        assert_eq!(
            t.lookup(Some("api.other.example"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("x.other.example"), None),
            Some((0, MatchKind::Wildcard))
        );
    }

    #[test]
    fn wildcards_match_any_depth_but_not_the_bare_suffix() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("a.b.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        assert_eq!(
            t.lookup(Some("a.b.c.d.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        assert_eq!(t.lookup(Some("example.com"), None), None);
        assert_eq!(t.lookup(Some("com"), None), None);
        assert_eq!(t.lookup(Some("badexample.com"), None), None);
        assert_eq!(t.lookup(Some(""), None), None);
        assert_eq!(t.lookup(Some("."), None), None);
        assert_eq!(t.lookup(Some("x."), None), None);
    }

    #[test]
    fn longest_wildcard_wins() {
        let t = table("");
        assert_eq!(
            t.lookup(Some("x.staging.example.com"), None),
            Some((2, MatchKind::Wildcard))
        );
        assert_eq!(
            t.lookup(Some("a.b.staging.example.com"), None),
            Some((2, MatchKind::Wildcard))
        );
        // `staging.example.com` itself is only under `*.example.com`.
        assert_eq!(
            t.lookup(Some("staging.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
    }

    #[test]
    fn config_names_are_normalised_and_lookups_take_normalised_names() {
        let t = table("");
        // Written `API.Other.Example.` and `*.Example.COM`.
        assert_eq!(
            t.lookup(Some("api.other.example"), None),
            Some((0, MatchKind::Exact))
        );
        assert_eq!(
            t.lookup(Some("www.example.com"), None),
            Some((1, MatchKind::Wildcard))
        );
        // What a ClientHello gives, normalised by the same code as the config.
        let sni = clienthello::ServerName::parse(b"API.Example.COM.").unwrap();
        assert_eq!(
            t.lookup(Some(sni.as_str()), None),
            Some((0, MatchKind::Exact))
        );
    }

    #[test]
    fn defaults() {
        let d = |id| Some((id, MatchKind::Default));
        // No default anywhere: nothing.
        let t = table("");
        assert_eq!(t.lookup(None, None), None);
        assert_eq!(t.lookup(Some("nope.test"), Some(0)), None);
        // The [::1] listener (index 1) names its own.
        assert_eq!(t.lookup(None, Some(1)), d(1));
        assert_eq!(t.lookup(None, Some(99)), None, "an unknown listener");

        let t = table("default_route: deeper\n");
        assert_eq!(t.lookup(None, Some(0)), d(2));
        assert_eq!(
            t.lookup(None, Some(1)),
            d(1),
            "the listener's own beats the global"
        );
        assert_eq!(t.lookup(Some("nope.test"), Some(1)), d(1));
        assert_eq!(t.lookup(None, Some(2)), d(2));
        assert_eq!(
            t.lookup(None, Some(99)),
            d(2),
            "an unknown listener: global"
        );
        assert_eq!(t.lookup(None, None), d(2), "no listener: global");
        // A name still beats any default.
        assert_eq!(
            t.lookup(Some("api.example.com"), Some(1)),
            Some((0, MatchKind::Exact))
        );
    }

    #[test]
    fn match_kind_labels() {
        assert_eq!(MatchKind::Exact.as_str(), "exact");
        assert_eq!(MatchKind::Wildcard.as_str(), "wildcard");
        assert_eq!(MatchKind::Default.as_str(), "default");
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RouteTable>();
        check::<Config>();
    }
}
