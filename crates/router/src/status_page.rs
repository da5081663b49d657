//! The HTML status page served at `/`: self-contained (no external assets),
//! it polls `status` every two seconds and shows, in the spirit of
//! HAProxy's stats page, what is configured and what happened: per route
//! the connections by result, bytes each way and rates over the last
//! minute; per endpoint its state (unknown, healthy, unhealthy, ejected,
//! misrouted), its last health check (result, latency, reason), connect
//! failures and last error; the
//! last refusals with the server name each client asked for.
//!
//! Two rules keep it safe and portable:
//! - Every value is put into the page as text (`textContent`), never as
//!   HTML: a server name a client sent (sanitised by [`crate::recent`])
//!   cannot add an element.
//! - Every URL is relative (`status`, `metrics`), so the page works behind
//!   a path prefix (DC/OS Admin Router serves it under `/service/<name>/`).
//!   Served at a prefix without its trailing slash (`/service/<name>`), the
//!   script puts the last path segment in front.

/// The page.
pub(crate) const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sniroute status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}
h2{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#555;margin-bottom:.6em}
.meta b{color:#222}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#e8eef5;font-weight:600}
th.sub{font-weight:normal;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td[data-field=time],td[data-field=client],td[data-field=listener]{white-space:nowrap}
tr.unrouted td{background:#f4f4f4;color:#444}
.healthy{background:#d9f2d9}.unhealthy{background:#f7d4d4}.ejected{background:#fbe7c6}
.misrouted{background:#e9c8f0}.unknown{background:#eee}
.bad{color:#a00}
.muted{color:#888;font-style:italic}
code{font-size:13px}
td[data-field=sni] code{overflow-wrap:anywhere}
</style></head>
<body>
<h1>sniroute</h1>
<div class="meta" id="meta">loading status ...</div>
<div class="meta"><a id="status-link" href="status">status (JSON)</a> &middot; <a id="metrics-link" href="metrics">metrics</a>
&middot; refreshed every 2 s</div>
<h2>Routes</h2>
<table id="routes"><thead><tr><th rowspan="2">Route</th><th rowspan="2">Server names</th>
<th colspan="3">Connections</th><th colspan="2">Bytes</th><th colspan="4" id="rates-head">Per second, last minute</th>
<th rowspan="2">Active tunnels</th></tr>
<tr><th class="sub">total</th><th class="sub">forwarded</th><th class="sub">refused</th>
<th class="sub">client&rarr;upstream</th><th class="sub">upstream&rarr;client</th>
<th class="sub">connections</th><th class="sub">refused</th><th class="sub">client&rarr;upstream</th>
<th class="sub">upstream&rarr;client</th></tr></thead>
<tbody></tbody></table>
<h2>Endpoints</h2>
<table id="endpoints"><thead><tr><th>Route</th><th>Endpoint</th><th>Upstream</th><th>State</th><th>Last check</th><th>Active tunnels</th>
<th>Connect failures</th><th>Last error</th></tr></thead><tbody></tbody></table>
<div id="labels" hidden>
<h2>Label routes <span class="muted">(from Marathon apps' labels)</span></h2>
<table id="label-routes"><thead><tr><th>Route</th><th>App</th><th>Port</th><th>Server names</th><th>Endpoints</th>
</tr></thead><tbody></tbody></table>
<h2>Label refusals and conflicts</h2>
<table id="label-issues"><thead><tr><th>Kind</th><th>App</th><th>Route</th><th>What happened</th>
</tr></thead><tbody></tbody></table>
</div>
<h2>Recent refusals <span class="muted">(the last 50, newest first)</span></h2>
<table id="refusals"><thead><tr><th>Time (UTC)</th><th>Client</th><th>Listener</th><th>Result</th><th>Alert sent</th>
<th>Route</th><th>Server name (as sent)</th></tr></thead><tbody></tbody></table>
<h2>Listeners</h2>
<table id="listeners"><thead><tr><th>Listener</th><th>Default route</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
// Relative to the page: "status" under any prefix. At a prefix without its
// trailing slash (a page at .../sniroute instead of .../sniroute/), "status"
// would leave the prefix, so the last segment goes in front.
const path = location.pathname;
const base = path.endsWith('/') ? '' : path.slice(path.lastIndexOf('/') + 1) + '/';
for (const id of ['status-link', 'metrics-link']) {
  const a = document.getElementById(id);
  a.setAttribute('href', base + a.getAttribute('href'));
}
// Builds an element; children are elements or text, never HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
// A cell; `value` is one child or a list of them.
function td(field, value, cls) {
  const attrs = {'data-field': field};
  if (cls) attrs.class = cls;
  return el('td', attrs, ...(Array.isArray(value) ? value : [value]));
}
function num(field, n) { return td(field, n == null ? '-' : String(n), 'n'); }
function bytes(n) {
  if (n == null) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + ' ' + units[i];
}
function rate(v, unit) {
  if (v == null) return '-';
  return (unit === 'B' ? bytes(v) : (v < 10 ? v.toFixed(2) : v.toFixed(1))) + '/s';
}
function refusedText(c) {
  const parts = Object.entries(c.by_result).filter(([k, n]) => k !== 'forwarded' && n > 0)
    .map(([k, n]) => k + ' ' + n);
  return parts.length ? parts.join(', ') : '0';
}
function when(t) { return t ? t.replace('T', ' ').replace('Z', '') : '-'; }
function fill(id, rows) { document.querySelector('#' + id + ' tbody').replaceChildren(...rows); }
function activityCells(conn, rt) {
  const r = rt.rates || {};
  return [
    num('connections', conn.total), num('forwarded', conn.forwarded),
    td('refused', refusedText(conn), conn.refused ? 'bad' : ''),
    td('bytes_up', bytes(rt.bytes ? rt.bytes.client_to_upstream : null), 'n'),
    td('bytes_down', bytes(rt.bytes ? rt.bytes.upstream_to_client : null), 'n'),
    td('connections_rate', rate(r.connections_per_second), 'n'),
    td('refusals_rate', rate(r.refusals_per_second), 'n'),
    td('up_rate', rate(r.client_to_upstream_bytes_per_second, 'B'), 'n'),
    td('down_rate', rate(r.upstream_to_client_bytes_per_second, 'B'), 'n'),
  ];
}
function render(s) {
  const state = s.draining ? 'draining' : (s.ready ? 'ready' : 'starting');
  const meta = [['version', s.version], ['config generation', s.config_generation + ' (' + s.config_source + ')'],
    ['uptime', s.uptime_seconds + ' s'], ['state', state], ['open connections', s.open_connections],
    ['open tunnels', s.open_tunnels], ['on old config', s.tunnels_on_old_config]];
  if (s.default_route) meta.push(['default route', s.default_route]);
  const m = document.getElementById('meta');
  m.replaceChildren();
  meta.forEach(([k, v], i) => { if (i) m.append(' \u00b7 '); m.append(k + ' ', el('b', {}, v)); });

  const routes = s.routes.map(rt => el('tr', {'data-route': rt.name},
    td('name', el('b', {}, rt.name)),
    td('server_names', el('code', {}, rt.server_names.join(', '))),
    ...activityCells(rt.connections, rt),
    num('active_tunnels', rt.active_tunnels)));
  const un = s.unrouted;
  routes.push(el('tr', {'data-route': '', class: 'unrouted'},
    td('name', el('i', {}, 'no route')),
    td('server_names', 'refused before a route was known'),
    ...activityCells(un.connections, {rates: un.rates}),
    num('active_tunnels', null)));
  fill('routes', routes);
  const w = [...s.routes, un].map(r => r.rates && r.rates.window_seconds).find(w => w != null);
  document.getElementById('rates-head').textContent =
    'Per second, last ' + (w == null ? 'minute' : Math.round(w) + ' s');

  const eps = [];
  for (const rt of s.routes) {
    const checked = rt.health_checked ? [] : [' ', el('span', {class: 'muted'}, '(not checked)')];
    if (!rt.endpoints.length) {
      eps.push(el('tr', {'data-route': rt.name}, td('route', rt.name),
        td('address', el('span', {class: 'muted'}, 'not resolved yet')), td('upstream', rt.upstreams.join(', ')),
        td('state', '-'), td('last_check', '-'), num('active_tunnels', 0), num('connect_failures', null), td('last_error', '-')));
    }
    for (const ep of rt.endpoints) {
      const err = ep.last_error;
      const c = ep.last_check;
      const check = c ? c.result + ' in ' + c.latency_ms + ' ms' + (c.reason ? ' \u2014 ' + c.reason : '')
        : (ep.reason || '-');
      eps.push(el('tr', {'data-route': rt.name, 'data-endpoint': ep.address}, td('route', rt.name),
        td('address', el('code', {}, ep.address)), td('upstream', el('code', {}, ep.upstream)),
        td('state', [el('b', {}, ep.state.toUpperCase()), ...checked], ep.state),
        td('last_check', ep.state === 'ejected' || ep.state === 'misrouted' ? ep.reason : check,
          c && c.result !== 'ok' ? 'bad' : ''),
        num('active_tunnels', ep.active_tunnels),
        num('connect_failures', ep.connect_failures),
        td('last_error', err ? when(err.time) + ' \u2014 ' + err.error : '-', err ? 'bad' : '')));
    }
  }
  fill('endpoints', eps);

  fill('refusals', s.recent_refusals.length ? s.recent_refusals.map(r => el('tr', {},
    td('time', when(r.time)), td('client', el('code', {}, r.client)), td('listener', el('code', {}, r.listener)),
    td('result', r.result), td('alert', r.alert), td('route', r.route || '-'),
    td('sni', r.sni == null ? el('span', {class: 'muted'}, 'no server name') : el('code', {}, r.sni)))) :
    [el('tr', {}, el('td', {colspan: 7, class: 'muted'}, 'none so far'))]);

  const lb = s.discovery && s.discovery.marathon && s.discovery.marathon.labels;
  document.getElementById('labels').hidden = !lb;
  if (lb) {
    fill('label-routes', lb.routes.length ? lb.routes.map(r => el('tr', {'data-route': r.name},
      td('name', el('b', {}, r.name)), td('app', el('code', {}, r.app_id)), num('port', r.port_index),
      td('server_names', el('code', {}, r.server_names.join(', '))),
      td('endpoints', r.endpoints.length ? el('code', {}, r.endpoints.map(e => e.address).join(', ')) :
        el('span', {class: 'muted'}, 'no task')))) :
      [el('tr', {}, el('td', {colspan: 5, class: 'muted'}, 'none'))]);
    fill('label-issues', lb.issues.length ? lb.issues.map(i => el('tr', {'data-kind': i.kind},
      td('kind', i.kind, 'bad'), td('app', el('code', {}, i.app_id)), td('route', i.route || '-'),
      td('message', i.message))) :
      [el('tr', {}, el('td', {colspan: 4, class: 'muted'}, 'none'))]);
  }

  fill('listeners', s.listeners.map(l => el('tr', {},
    td('address', el('code', {}, l.address)), td('default_route', l.default_route || s.default_route || '(none)'))));
}
async function refresh() {
  try {
    const r = await fetch(base + 'status', {cache: 'no-store'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    render(await r.json());
  } catch (e) {
    document.getElementById('meta').textContent = 'cannot read status: ' + e;
  }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::PAGE;

    /// Behind a path prefix, an absolute path (`/status`) leaves the
    /// prefix: every URL in the page must be relative.
    #[test]
    fn urls_are_relative() {
        // No absolute or protocol-relative URL of any kind.
        for quote in ['"', '\'', '`'] {
            for path in ["/status", "/metrics", "/healthz", "/readyz", "//", "/?"] {
                let absolute = format!("{quote}{path}");
                assert!(!PAGE.contains(&absolute), "absolute URL {absolute}");
            }
        }
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        // The one request, relative to the page.
        assert_eq!(PAGE.matches("fetch(").count(), 1);
        assert!(PAGE.contains("fetch(base + 'status'"));
        assert!(PAGE.contains("path.endsWith('/') ? '' : path.slice("));
        for other in [
            "XMLHttpRequest",
            "EventSource",
            "WebSocket",
            "location.href =",
            "window.open",
            "import(",
        ] {
            assert!(!PAGE.contains(other), "{other}");
        }
        // Links: relative in the markup, prefixed by the script.
        for attr in ["href=", "src=", "action="] {
            for (i, _) in PAGE.match_indices(attr) {
                let value = &PAGE[i + attr.len()..];
                assert!(
                    value.starts_with("\"status\"") || value.starts_with("\"metrics\""),
                    "unexpected URL: {}",
                    &PAGE[i..(i + 30).min(PAGE.len())]
                );
            }
        }
        assert!(PAGE.contains("a.setAttribute('href', base + a.getAttribute('href'))"));
    }

    /// Values go in as text: no `innerHTML`, `outerHTML`,
    /// `insertAdjacentHTML` or `document.write`.
    #[test]
    fn values_are_text_never_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!PAGE.contains(sink), "the page uses {sink}");
        }
    }
}
