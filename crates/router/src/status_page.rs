//! The HTML status page served at `/`: self-contained (no external assets),
//! it polls `/status` every two seconds and shows routes, endpoints, health
//! and live counters, in the spirit of HAProxy's stats page.

/// The page.
pub(crate) const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sniroute status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}
.meta{color:#555;margin-bottom:1em}
table{border-collapse:collapse;width:100%;background:#fff;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#e8eef5}
.up{background:#d9f2d9}.down{background:#f7d4d4}
code{font-size:13px}
</style></head>
<body>
<h1>sniroute</h1>
<div class="meta" id="meta">loading /status ...</div>
<table id="routes"><thead><tr><th>Route</th><th>Server names</th><th>Endpoint</th>
<th>Upstream</th><th>Health</th><th>Active tunnels</th></tr></thead><tbody></tbody></table>
<table id="listeners"><thead><tr><th>Listener</th><th>Default route</th></tr></thead><tbody></tbody></table>
<script>
function esc(s){return String(s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
async function refresh(){
  try{
    const r=await fetch('/status',{cache:'no-store'}); const s=await r.json();
    document.getElementById('meta').innerHTML='version <b>'+esc(s.version)+'</b> &middot; config generation <b>'+
      esc(s.config_generation)+'</b> ('+esc(s.config_source)+') &middot; uptime <b>'+esc(s.uptime_seconds)+' s</b> &middot; '+
      (s.draining?'<b>draining</b>':(s.ready?'ready':'starting'))+' &middot; open connections <b>'+esc(s.open_connections)+
      '</b> &middot; open tunnels <b>'+esc(s.open_tunnels)+'</b> &middot; on old config <b>'+esc(s.tunnels_on_old_config)+'</b>'+
      (s.default_route?' &middot; default route <b>'+esc(s.default_route)+'</b>':'');
    let rows='';
    for(const rt of s.routes){
      const eps=rt.endpoints.length?rt.endpoints:[{address:'(not resolved yet)',upstream:rt.upstreams.join(', '),healthy:false,active_tunnels:0}];
      eps.forEach((ep,i)=>{
        rows+='<tr>'+(i==0?'<td rowspan="'+eps.length+'"><b>'+esc(rt.name)+'</b></td><td rowspan="'+eps.length+'"><code>'+
          rt.server_names.map(esc).join('<br>')+'</code></td>':'')+'<td><code>'+esc(ep.address)+'</code></td><td><code>'+
          esc(ep.upstream)+'</code></td><td class="'+(ep.healthy?'up':'down')+'">'+(ep.healthy?'UP':'DOWN')+'</td><td>'+
          esc(ep.active_tunnels)+'</td></tr>';
      });
    }
    document.querySelector('#routes tbody').innerHTML=rows;
    document.querySelector('#listeners tbody').innerHTML=s.listeners.map(l=>'<tr><td><code>'+esc(l.address)+
      '</code></td><td>'+esc(l.default_route||s.default_route||'(none)')+'</td></tr>').join('');
  }catch(e){document.getElementById('meta').textContent='cannot read /status: '+e;}
}
refresh(); setInterval(refresh,2000);
</script>
</body></html>
"#;
