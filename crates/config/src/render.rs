//! The resolved routing table as `sniroute check` and `sniroute demo`
//! print it.

use std::fmt::Write as _;

use crate::{format_duration, Config};

/// The resolved routing table as `sniroute check` prints it: the source,
/// listeners with their default routes, admin with its allowed sources,
/// timeouts, limits, then each route with its server names, upstreams
/// (DC/OS services expanded), balancing, health check, PROXY protocol and
/// allowed sources.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = render_into(&mut out, config);
    out
}

fn render_into(out: &mut String, config: &Config) -> std::fmt::Result {
    writeln!(out, "config: {}", config.source.display_name())?;
    writeln!(out, "listeners:")?;
    let width = config
        .listeners
        .iter()
        .map(|l| l.address.to_string().len())
        .max()
        .unwrap_or(0);
    for l in &config.listeners {
        let default = match (&l.default_route, &config.default_route) {
            (Some(own), _) => format!("{own} (this listener's)"),
            (None, Some(global)) => format!("{global} (global)"),
            (None, None) => "none: connections without a matching name are closed".to_owned(),
        };
        let address = l.address.to_string();
        writeln!(out, "  {address:<width$}  default route: {default}")?;
        if let Some(p) = &l.accept_proxy_protocol {
            let nets: Vec<String> = p.from.iter().map(ToString::to_string).collect();
            let must = if p.required { "must" } else { "may" };
            writeln!(
                out,
                "  {:<width$}  PROXY protocol: {} {must} send a header (v1 or v2); other peers may not",
                "",
                nets.join(", ")
            )?;
        }
    }
    match &config.admin {
        Some(a) => {
            writeln!(out, "admin: {}", a.address)?;
            let nets: Vec<String> = a.allow_sources.iter().map(ToString::to_string).collect();
            let note = if a.default_allow_list() {
                " (the default: loopback and private networks)"
            } else {
                ""
            };
            writeln!(
                out,
                "  allow sources: {}{note}; other peers are closed unanswered",
                nets.join(", ")
            )?;
        }
        None => writeln!(out, "admin: off")?,
    }
    let t = &config.timeouts;
    writeln!(
        out,
        "timeouts: client_hello {}, connect {}, idle {}, accept_grace {}, drain {}, tcp_user_timeout {}",
        format_duration(t.client_hello),
        format_duration(t.connect),
        format_duration(t.idle),
        format_duration(t.accept_grace),
        format_duration(t.drain),
        format_duration(t.tcp_user_timeout)
    )?;
    writeln!(
        out,
        "limits: max_connections {}, max_client_hello_bytes {}, max_pending_hellos {}, \
         per source: {} pending hellos, {} connections",
        config.limits.max_connections,
        config.limits.max_client_hello_bytes,
        config.limits.max_pending_hellos,
        config.limits.max_pending_hellos_per_source,
        config
            .limits
            .max_connections_per_source
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
    )?;
    writeln!(out, "forwarding: {}", config.forwarding.as_str())?;
    if let Some(m) = &config.discovery.marathon {
        writeln!(
            out,
            "discovery: marathon {} (tried in order), resync {}, stall timeout {}, {}",
            m.urls.join(", "),
            format_duration(m.resync),
            format_duration(m.stall_timeout),
            if m.required {
                "required: /readyz answers 503 until the first sync"
            } else {
                "not required: ready before the first sync"
            }
        )?;
        render_access(out, m.ca_file.as_deref(), m.auth.as_ref())?;
        if let Some(l) = &m.labels {
            let allowed: Vec<String> = l
                .server_names_allowed
                .iter()
                .map(ToString::to_string)
                .collect();
            writeln!(
                out,
                "label routes: apps labelled SNIROUTE_GROUP={}{}, names allowed: {}",
                l.group,
                if l.marathon_lb {
                    " (and Marathon-LB's HAPROXY_GROUP, tcp ports only)"
                } else {
                    ""
                },
                if allowed.is_empty() {
                    "none (every label route is refused)".to_owned()
                } else {
                    allowed.join(", ")
                }
            )?;
        }
    }
    if let Some(m) = &config.discovery.mesos {
        writeln!(
            out,
            "discovery: mesos {} (tried in order), resync {}, {}",
            m.urls.join(", "),
            format_duration(m.resync),
            if m.required {
                "required: /readyz answers 503 until the first sync"
            } else {
                "not required: ready before the first sync"
            }
        )?;
        render_access(out, m.ca_file.as_deref(), m.auth.as_ref())?;
    }
    writeln!(
        out,
        "watch_config: {}",
        if config.watch_config { "on" } else { "off" }
    )?;
    writeln!(out, "workers: {}", config.workers)?;
    match &config.default_route {
        Some(d) => writeln!(
            out,
            "default route: {d} (for ClientHellos without SNI or with an unmatched name)"
        )?,
        None => writeln!(
            out,
            "default route: none (ClientHellos without SNI or with an unmatched name are refused)"
        )?,
    }
    writeln!(out, "routes:")?;
    for r in &config.routes {
        let mut roles = Vec::new();
        if config.default_route.as_deref() == Some(r.name.as_str()) {
            roles.push("global default".to_owned());
        }
        for l in &config.listeners {
            if l.default_route.as_deref() == Some(r.name.as_str()) {
                roles.push(format!("default on {}", l.address));
            }
        }
        if roles.is_empty() {
            writeln!(out, "  {}", r.name)?;
        } else {
            writeln!(out, "  {} ({})", r.name, roles.join(", "))?;
        }
        let exact: Vec<String> = r
            .server_names
            .iter()
            .filter(|n| !n.is_wildcard())
            .map(ToString::to_string)
            .collect();
        let wild: Vec<String> = r
            .server_names
            .iter()
            .filter(|n| n.is_wildcard())
            .map(ToString::to_string)
            .collect();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        writeln!(out, "    exact names:    {}", list(&exact))?;
        writeln!(out, "    wildcards:      {}", list(&wild))?;
        let upstreams: Vec<String> = r.upstreams.iter().map(ToString::to_string).collect();
        match &r.dcos_service {
            _ if r.mesos_tasks.is_some() => writeln!(
                out,
                "    upstreams:      {} (discovered)",
                r.mesos_tasks
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )?,
            _ if r.marathon_app.is_some() => writeln!(
                out,
                "    upstreams:      {} (discovered)",
                r.marathon_app
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )?,
            Some(service) => writeln!(
                out,
                "    upstreams:      {} (DC/OS service {service})",
                upstreams.join(", ")
            )?,
            None => writeln!(out, "    upstreams:      {}", upstreams.join(", "))?,
        }
        writeln!(out, "    balance:        {}", r.balance.as_str())?;
        match &r.health_check {
            Some(h) => writeln!(
                out,
                "    health check:   every {}, timeout {}, unhealthy after {} failures, healthy after {} successes",
                format_duration(h.interval),
                format_duration(h.timeout),
                h.unhealthy_after,
                h.healthy_after
            )?,
            None => writeln!(out, "    health check:   off")?,
        }
        if let Some(https) = r.health_check.as_ref().and_then(|h| h.kind.https()) {
            let kind = r.health_check.as_ref().map_or("", |h| h.kind.as_str());
            let verify = match &https.ca_file {
                Some(ca) => format!("CA {}", ca.display()),
                None => "certificate NOT verified".to_owned(),
            };
            writeln!(
                out,
                "    check request:  {kind} GET {} for {} ({verify})",
                https.path,
                https.server_name.as_str()
            )?;
        }
        match &r.outlier_detection {
            Some(o) => writeln!(
                out,
                "    outliers:       ejected after {} connect failures in a row, for {} doubling, at most {}% at once",
                o.consecutive_failures,
                format_duration(o.base_ejection),
                o.max_ejected_percent
            )?,
            None => writeln!(out, "    outliers:       not ejected")?,
        }
        writeln!(out, "    proxy protocol: {}", r.proxy_protocol.as_str())?;
        if r.allow_sources.is_empty() {
            writeln!(out, "    allow sources:  everyone")?;
        } else {
            let nets: Vec<String> = r.allow_sources.iter().map(ToString::to_string).collect();
            writeln!(out, "    allow sources:  {}", nets.join(", "))?;
        }
    }
    Ok(())
}

/// A discovery source's `ca_file` and `auth`, indented under its line.
fn render_access(
    out: &mut String,
    ca_file: Option<&std::path::Path>,
    auth: Option<&crate::DiscoveryAuth>,
) -> std::fmt::Result {
    if let Some(ca) = ca_file {
        writeln!(
            out,
            "  ca_file: {} (the only CA trusted for https)",
            ca.display()
        )?;
    }
    match auth {
        None => {}
        Some(crate::DiscoveryAuth::TokenFile(f)) => {
            writeln!(
                out,
                "  auth: token from {} (read on each request)",
                f.display()
            )?;
        }
        Some(crate::DiscoveryAuth::ServiceAccount {
            uid,
            private_key_file,
            login_url,
        }) => writeln!(
            out,
            "  auth: service account `{uid}`, key {}, login at {login_url}",
            private_key_file.display()
        )?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn render_shows_accept_proxy_protocol() {
        let out = render(&config(
            "listeners: [{address: \"0.0.0.0:6443\", accept_proxy_protocol: {from: [10.0.0.0/8, \"::1\"]}},\n\
             {address: \"0.0.0.0:7443\", accept_proxy_protocol: {from: [10.0.0.0/8], required: false}}]\n\
             routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
        ));
        assert!(
            out.contains("\n                PROXY protocol: 10.0.0.0/8, ::1/128 must send a header (v1 or v2); other peers may not\n"),
            "{out}"
        );
        assert!(
            out.contains("PROXY protocol: 10.0.0.0/8 may send a header (v1 or v2)"),
            "{out}"
        );
    }

    #[test]
    fn render_shows_the_resolved_table() {
        let yaml = r#"
listeners: ["0.0.0.0:6443", {address: "0.0.0.0:7443", default_route: staging}]
admin: "127.0.0.1:9090"
timeouts: {client_hello: 1.5s}
routes:
  - name: dev-kubernetes01
    server_names: ["devkubernetes01.example.com"]
    dcos_service: dev/kubernetes01
  - name: staging
    server_names: ["*.staging.example.com", "staging.example.com"]
    upstreams: ["10.0.4.11:6443", "[2001:db8::11]:6443", "master.mesos:6443"]
    balance: round_robin
    health_check: false
    proxy_protocol: v2
    allow_sources: ["10.0.0.0/8", "2001:db8::/32"]
default_route: dev-kubernetes01
"#;
        let out = render(&config(yaml));
        let lines: Vec<&str> = out.lines().collect();
        let want = [
            "config: test.yaml",
            "listeners:",
            "  0.0.0.0:6443  default route: dev-kubernetes01 (global)",
            "  0.0.0.0:7443  default route: staging (this listener's)",
            "admin: 127.0.0.1:9090",
            "  allow sources: 127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, ::1/128, fc00::/7 \
             (the default: loopback and private networks); other peers are closed unanswered",
            "timeouts: client_hello 1.5s, connect 10s, idle 24h, accept_grace 0s, drain 30s, tcp_user_timeout 1m",
            "limits: max_connections 50000, max_client_hello_bytes 16384, max_pending_hellos 2048, per source: 256 pending hellos, unlimited connections",
            "forwarding: splice",
            "watch_config: off",
            "workers: auto",
            "default route: dev-kubernetes01 (for ClientHellos without SNI or with an unmatched name)",
            "routes:",
            "  dev-kubernetes01 (global default)",
            "    exact names:    devkubernetes01.example.com, apiserver.devkubernetes01.l4lb.thisdcos.directory",
            "    wildcards:      -",
            "    upstreams:      apiserver.devkubernetes01.l4lb.thisdcos.directory:6443 (DC/OS service dev/kubernetes01)",
            "    balance:        least_connections",
            "    health check:   every 5s, timeout 2s, unhealthy after 3 failures, healthy after 2 successes",
            "    outliers:       ejected after 3 connect failures in a row, for 10s doubling, at most 50% at once",
            "    proxy protocol: none",
            "    allow sources:  everyone",
            "  staging (default on 0.0.0.0:7443)",
            "    exact names:    staging.example.com",
            "    wildcards:      *.staging.example.com",
            "    upstreams:      10.0.4.11:6443, [2001:db8::11]:6443, master.mesos:6443",
            "    balance:        round_robin",
            "    health check:   off",
            "    outliers:       ejected after 3 connect failures in a row, for 10s doubling, at most 50% at once",
            "    proxy protocol: v2",
            "    allow sources:  10.0.0.0/8, 2001:db8::/32",
        ];
        assert_eq!(lines, want, "\n{out}");

        let bare = render(&config(
            "listeners: [\"[::]:6443\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
        ));
        assert!(bare.contains("\nadmin: off\n"), "{bare}");
        let own = render(&config(
            "listeners: [\"[::]:6443\"]\nadmin: {address: \"0.0.0.0:9190\", allow_sources: [10.1.0.0/16, \"::1\"]}\n\
             routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
        ));
        assert!(
            own.contains(
                "\nadmin: 0.0.0.0:9190\n  allow sources: 10.1.0.0/16, ::1/128; other peers are closed unanswered\n"
            ),
            "{own}"
        );
        assert!(bare.contains("  [::]:6443  default route: none"), "{bare}");
        let mixed = render(&config(
            "listeners: [\"[::]:6443\", \"127.0.0.1:6443\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
        ));
        assert!(
            mixed.contains("\n  [::]:6443       default route: none"),
            "{mixed}"
        );
        assert!(
            mixed.contains("\n  127.0.0.1:6443  default route: none"),
            "{mixed}"
        );
        assert!(
            bare.contains("\ndefault route: none (ClientHellos without SNI"),
            "{bare}"
        );
        assert!(!bare.contains("discovery"), "{bare}");
    }

    #[test]
    fn render_shows_discovery_and_marathon_routes() {
        let out = render(&config(
            "listeners: [\"0.0.0.0:6443\"]\n\
             discovery: {marathon: {urls: [\"http://m1:8080\", \"http://m2:8080/marathon\"], resync: 1m}}\n\
             routes:\n\
             - {name: web, server_names: [web.test], marathon_app: {id: /prod/web, port_name: https}}\n\
             - {name: api, server_names: [api.test], marathon_app: {id: /prod/api/, port_index: 1}}\n",
        ));
        assert!(
            out.contains(
                "\ndiscovery: marathon http://m1:8080, http://m2:8080/marathon (tried in order), resync 1m, \
                 stall timeout 2m, required: /readyz answers 503 until the first sync\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "\n    upstreams:      Marathon app /prod/web, port named https (discovered)\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "\n    upstreams:      Marathon app /prod/api, port index 1 (discovered)\n"
            ),
            "{out}"
        );
        assert!(!out.contains("label routes"), "{out}");
    }

    #[test]
    fn render_shows_label_routes() {
        let with = |extra: &str| {
            render(&config(&format!(
                "listeners: [\"0.0.0.0:6443\"]\n\
                 discovery: {{marathon: {{urls: [\"http://m:8080\"], label_group: external{extra}}}}}\n\
                 routes: [{{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}}]\n"
            )))
        };
        let out = with("");
        assert!(
            out.contains("\nlabel routes: apps labelled SNIROUTE_GROUP=external, names allowed: none (every label route is refused)\n"),
            "{out}"
        );
        let out = with(
            ", label_server_names_allowed: [\"*.apps.test\", a.test], marathon_lb_labels: true",
        );
        assert!(
            out.contains("\nlabel routes: apps labelled SNIROUTE_GROUP=external (and Marathon-LB's HAPROXY_GROUP, tcp ports only), names allowed: *.apps.test, a.test\n"),
            "{out}"
        );
    }

    #[test]
    fn render_shows_mesos_discovery_and_routes() {
        let out = render(&config(
            "listeners: [\"0.0.0.0:6443\"]\n\
             discovery: {mesos: {urls: [\"http://leader.mesos:5050\"], required: false}}\n\
             routes:\n\
             - {name: k, server_names: [k.test], mesos_tasks: {framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}}\n",
        ));
        assert!(
            out.contains(
                "\ndiscovery: mesos http://leader.mesos:5050 (tried in order), resync 5m, \
                 not required: ready before the first sync\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "\n    upstreams:      Mesos tasks of framework dev/kubernetes01 matching `kube-control-plane`, port named apiserver (discovered)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn render_shows_discovery_ca_file_and_auth() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let token = dir.path().join("token");
        let key = dir.path().join("key.pem");
        std::fs::write(&ca, crate::tests::CA_PEM).unwrap();
        std::fs::write(&token, "t").unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let route = "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
        let out = render(&config(&format!(
            "listeners: [\"0.0.0.0:6443\"]\ndiscovery: {{marathon: {{urls: [\"https://m/marathon\"], ca_file: {}, auth: {{token_file: {}}}}}}}\n{route}",
            ca.display(),
            token.display()
        )));
        assert!(
            out.contains(&format!(
                "\n  ca_file: {} (the only CA trusted for https)\n  auth: token from {} (read on each request)\n",
                ca.display(),
                token.display()
            )),
            "{out}"
        );
        let out = render(&config(&format!(
            "listeners: [\"0.0.0.0:6443\"]\ndiscovery: {{marathon: {{urls: [\"http://m\"], auth: {{service_account: {{uid: sniroute, private_key_file: {}, login_url: \"http://m/acs/api/v1/auth/login\"}}}}}}}}\n{route}",
            key.display()
        )));
        assert!(
            out.contains(&format!(
                "\n  auth: service account `sniroute`, key {}, login at http://m/acs/api/v1/auth/login\n",
                key.display()
            )),
            "{out}"
        );
    }
}
