//! The deployment files under `deploy/` agree with each other and with kvrouter: the config
//! path, user and ports the Dockerfile, the systemd unit and the Kubernetes sidecar name are the
//! same, every config they carry passes `kvrouter -t`, the unit passes `systemd-analyze
//! verify`, and the sidecar's ConfigMap runs: its probe and scrape paths answer, and a
//! ConfigMap update (the kubelet's `..data` symlink swap) is reloaded.
//!
//! No Docker engine or Kubernetes API runs here, so the image is not built and the manifests
//! are not applied; what they name is checked instead.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{
    free_port, http_get, kvrouter_bin, memcached, metric, redis_server, scrape, wait_for,
    wait_port, Mc, Proc, Resp, TempDir,
};
use serde_json::Value;

/// Where every deployment reads the config.
const CONFIG_PATH: &str = "/etc/kvrouter/kvrouter.yml";
const ADMIN_PORT: u16 = 9191;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `kvrouter -t -c FILE` accepts the file.
fn assert_valid(path: &Path) {
    let out = Command::new(kvrouter_bin())
        .args(["-t", "-c"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("configuration ok"),
        "{}: {text}",
        path.display()
    );
}

/// (host, port) of an `ADDR:PORT` listen address.
fn host_port(listen: &str) -> (String, u16) {
    let (h, p) = listen.rsplit_once(':').expect("host:port");
    (h.to_string(), p.parse().expect("port"))
}

/// The admin address and the listeners' addresses of a kvrouter-format config.
fn addresses(config: &Value) -> (String, Vec<String>) {
    let admin = config["admin"]["listen"].as_str().expect("admin.listen");
    let listeners = config["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["listen"].as_str().expect("listen").to_string())
        .collect();
    (admin.to_string(), listeners)
}

/// The words of a Dockerfile instruction's JSON-array form, e.g. `CMD ["-c", "x"]`.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{instruction} {line}: {e}"))
}

fn version(s: &str) -> (u32, u32) {
    let mut it = s
        .split('.')
        .map(|p| p.parse::<u32>().expect("version number"));
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn dockerfile_matches_its_config_and_the_toolchain() {
    let docker = read("deploy/Dockerfile");
    let froms: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    // Built with a Rust at least as new as Cargo.toml asks for, the version the README names.
    let image = froms[0].split_whitespace().next().unwrap();
    let tag = image.strip_prefix("rust:").expect("official rust image");
    let rust = tag.split('-').next().unwrap();
    let cargo = read("Cargo.toml");
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(version(rust) >= version(msrv), "{rust} < {msrv}");
    assert!(
        read("README.md").contains(&format!("Rust {rust}")),
        "README's install section names Rust {rust}"
    );
    // A small runtime image of the same Debian release, not the toolchain.
    let runtime = froms[1];
    assert!(runtime.starts_with("debian:") && runtime.ends_with("-slim"));
    let release = tag.rsplit('-').next().unwrap();
    assert!(runtime.contains(release), "{runtime} vs {tag}");
    // Runs as an unprivileged user.
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{user}");
    // The config at the documented path, as the command line says.
    let cmd = exec_form(&docker, "CMD");
    assert_eq!(cmd, ["-c", CONFIG_PATH]);
    assert_eq!(
        exec_form(&docker, "ENTRYPOINT"),
        ["/usr/local/bin/kvrouter"]
    );
    let copy = docker
        .lines()
        .find(|l| l.starts_with("COPY ") && l.ends_with(CONFIG_PATH))
        .expect("COPY of the default config");
    let src = copy.split_whitespace().nth(1).unwrap();
    assert_valid(&root().join(src));
    // EXPOSE names exactly the ports the shipped config listens on, admin included.
    let exposed: BTreeSet<u16> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let (admin, listeners) = addresses(&yaml(&read(src)));
    let mut ports: BTreeSet<u16> = listeners.iter().map(|l| host_port(l).1).collect();
    ports.insert(host_port(&admin).1);
    assert_eq!(exposed, ports);
    // Inside a container, only a wildcard bind is reachable from outside.
    for l in listeners.iter().chain([&admin]) {
        assert_eq!(host_port(l).0, "0.0.0.0", "{l}");
    }
    assert_eq!(host_port(&admin).1, ADMIN_PORT);
    // The build context leaves out build outputs.
    let ignore = read("deploy/Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}

/// `KEY=VALUE` lines of a unit file (every value of repeated keys).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_unit_is_valid_and_hardened() {
    let unit = read("deploy/kvrouter.service");
    let bin = "/usr/local/bin/kvrouter";
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!("{bin} -c {CONFIG_PATH}")]
    );
    // `systemctl reload` checks the file, then sends SIGHUP.
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        [
            format!("{bin} -t -c {CONFIG_PATH}"),
            "/bin/kill -HUP $MAINPID".to_string()
        ]
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}");
    }

    let analyze = "/usr/bin/systemd-analyze";
    assert!(
        Path::new(analyze).exists(),
        "{analyze} is missing: install the Debian package `systemd` (scripts/test does)"
    );
    // verify wants the binary to exist: point the unit at the one under test.
    let dir = TempDir::new();
    let test_unit = dir.write(
        "kvrouter.service",
        &unit.replace(bin, kvrouter_bin().to_str().unwrap()),
    );
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&test_unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown or misspelled key is only a warning (exit 0) naming the file.
    assert!(
        out.status.success() && !stderr.contains("kvrouter.service"),
        "systemd-analyze verify: {stderr}"
    );
    // systemd's own exposure score: 0 (locked down) to 10 (unprotected).
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&test_unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score}\n{stdout}");
    // ExecStartPre checks the config the unit reads; the shipped one passes.
    assert_eq!(
        unit_values(&unit, "ExecStartPre"),
        [format!("{bin} -t -c {CONFIG_PATH}")]
    );
    assert_valid(&root().join("deploy/kvrouter.yml"));
}

/// The sidecar manifest's ConfigMap and Deployment.
fn sidecar() -> (Value, Value) {
    let text = read("deploy/kubernetes/sidecar.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("manifest parses");
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    assert_eq!(docs.len(), 2);
    (find("ConfigMap"), find("Deployment"))
}

/// The kvrouter config the Deployment mounts, as (file name in the ConfigMap, text).
fn sidecar_config() -> (String, String) {
    let (cm, deploy) = sidecar();
    let pod = &deploy["spec"]["template"]["spec"];
    let kv = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kvrouter")
        .expect("kvrouter container");
    let args: Vec<&str> = kv["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["-c", CONFIG_PATH]);
    let (dir, file) = CONFIG_PATH.rsplit_once('/').unwrap();
    // Mounted as a directory: a subPath mount would never see ConfigMap updates.
    let mounts = kv["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("config directory mount");
    assert!(mount.get("subPath").is_none(), "{mount}");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let text = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap has no {file}"));
    (file.to_string(), text.to_string())
}

#[test]
fn sidecar_manifest_is_consistent() {
    let (_, deploy) = sidecar();
    let (file, text) = sidecar_config();
    let dir = TempDir::new();
    assert_valid(&dir.write(&file, &text));
    let config = yaml(&text);
    let (admin, listeners) = addresses(&config);
    // The kubelet probes and Prometheus scrapes the pod IP; the app uses loopback.
    let (admin_host, admin_port) = host_port(&admin);
    assert_eq!((admin_host.as_str(), admin_port), ("0.0.0.0", ADMIN_PORT));
    for l in &listeners {
        assert_eq!(host_port(l).0, "127.0.0.1", "{l}");
    }

    let template = &deploy["spec"]["template"];
    let containers = template["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "the application and kvrouter");
    let kv = containers.iter().find(|c| c["name"] == "kvrouter").unwrap();
    let app = containers.iter().find(|c| c["name"] != "kvrouter").unwrap();
    // Probes on /healthz of the admin port, by name or number.
    let ports = kv["ports"].as_array().unwrap();
    let port_of = |p: &Value| -> u64 {
        match p {
            Value::String(name) => ports
                .iter()
                .find(|q| q["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no port named {name}"))["containerPort"]
                .as_u64()
                .unwrap(),
            n => n.as_u64().unwrap(),
        }
    };
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &kv[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(port_of(&get["port"]), u64::from(admin_port), "{probe}");
    }
    // Prometheus' conventional scrape annotations point at /metrics on the admin port.
    let ann = &template["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    // Requests and limits, and the image's unprivileged user.
    for c in containers {
        let r = &c["resources"];
        assert!(r["requests"]["cpu"].is_string() && r["requests"]["memory"].is_string());
        assert!(r["limits"]["memory"].is_string(), "{}", c["name"]);
    }
    let sc = &kv["securityContext"];
    let docker = read("deploy/Dockerfile");
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert_eq!(sc["runAsUser"].to_string(), user.split(':').next().unwrap());
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    // The application is pointed at every listener.
    let env: Vec<&str> = app["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    for l in &listeners {
        assert!(env.iter().any(|v| v.contains(l.as_str())), "{l} in {env:?}");
    }
}

/// Lay out a ConfigMap volume as the kubelet does: `FILE -> ..data/FILE`,
/// `..data -> ..VERSION/`, a new version swapped in by renaming a fresh `..data` link over it.
fn kubelet_publish(dir: &Path, version: &str, file: &str, text: &str) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(file), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(file);
    if std::fs::symlink_metadata(&link).is_err() {
        symlink(format!("..data/{file}"), &link).unwrap();
    }
}

#[test]
fn sidecar_config_runs_and_follows_a_configmap_update() {
    let (file, text) = sidecar_config();
    // The manifest's config, with real loopback backends and free ports for its fixed ones.
    let (m0, m1, m2) = (memcached(), memcached(), memcached());
    let (r0, r1) = (redis_server(), redis_server());
    let (mc_port, redis_port, admin_port) = (free_port(), free_port(), free_port());
    let mut live = text
        .replace("127.0.0.1:11211", &format!("127.0.0.1:{mc_port}"))
        .replace("127.0.0.1:6379", &format!("127.0.0.1:{redis_port}"))
        .replace("0.0.0.0:9191", &format!("127.0.0.1:{admin_port}"));
    for (i, m) in [&m0, &m1, &m2].iter().enumerate() {
        let name = format!("memcached-{i}.memcached.cache.svc.cluster.local:11211");
        assert!(live.contains(&name), "{name}");
        live = live.replace(&name, &m.addr.to_string());
    }
    for (i, r) in [&r0, &r1].iter().enumerate() {
        let name = format!("redis-{i}.redis.cache.svc.cluster.local:6379");
        assert!(live.contains(&name), "{name}");
        live = live.replace(&name, &r.addr.to_string());
    }

    let tmp = TempDir::new();
    let mount = tmp.0.join("etc-kvrouter");
    std::fs::create_dir_all(&mount).unwrap();
    kubelet_publish(&mount, "2026_01_01_00_00_00.1", &file, &live);
    let listen: SocketAddr = format!("127.0.0.1:{mc_port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    // No --admin: the config's own admin listener, as in the pod.
    let mut child = Command::new(kvrouter_bin())
        .arg("-c")
        .arg(mount.join(&file))
        .stdout(Stdio::null())
        .spawn()
        .expect("start kvrouter");
    wait_port(listen, &mut child);
    wait_port(admin, &mut child);
    let _proxy = Proc {
        child,
        addr: listen,
    };

    // The probes' and the scrape annotation's paths, on the admin port.
    let (status, body) = http_get(admin, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let samples = scrape(admin);
    assert!(metric(&samples, "kvrouter_config_generation", &[]).is_some());
    // The application's view: both listeners serve.
    let mut mc = Mc::connect(listen);
    assert_eq!(mc.set("sidecar", b"v1"), "STORED");
    assert_eq!(mc.get("sidecar").as_deref(), Some(&b"v1"[..]));
    let rlisten: SocketAddr = format!("127.0.0.1:{redis_port}").parse().unwrap();
    let mut rc = Resp::connect(rlisten);
    assert_eq!(rc.cmd("SET sidecar v1"), "OK");
    assert_eq!(rc.cmd("GET sidecar"), "v1");

    // A ConfigMap update: the memcached pool shrinks to one server.
    let generation = |a| metric(&scrape(a), "kvrouter_config_generation", &[]).unwrap();
    let before = generation(admin);
    let one = live
        .lines()
        .filter(|l| !l.contains(&m1.addr.to_string()) && !l.contains(&m2.addr.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    kubelet_publish(&mount, "2026_01_01_00_01_00.2", &file, &one);
    wait_for(10, "the ConfigMap update to be reloaded", || {
        (generation(admin) > before).then_some(())
    });
    let ok = metric(
        &scrape(admin),
        "kvrouter_config_reloads_total",
        &[("result", "ok")],
    );
    assert!(ok.unwrap_or(0.0) >= 1.0, "{ok:?}");
    // Every key now lives on the one remaining server.
    let mut direct = Mc::connect(m0.addr);
    for i in 0..20 {
        let k = format!("after-update-{i}");
        assert_eq!(mc.set(&k, b"x"), "STORED");
        assert_eq!(direct.get(&k).as_deref(), Some(&b"x"[..]), "{k}");
    }
}
