//! The network as the operating system sees it: interfaces and their type
//! from /sys (Wi-Fi has a `wireless` folder or a `phy80211` link, cellular
//! modems say `DEVTYPE=wwan`), Wi-Fi signal from /proc/net/wireless, and
//! whether the hub really answers. Metered comes from the config; under
//! `auto` it comes from NetworkManager's `Metered` property over D-Bus where
//! NetworkManager runs (read with systemd's `busctl`, so no D-Bus library is
//! linked), else a cellular primary link counts as metered.

use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    /// `wifi`, `cellular`, `ethernet` or `other`.
    pub kind: String,
    pub up: bool,
    /// Link quality reported by the OS (Wi-Fi), if any.
    pub signal: Option<i64>,
}

/// The till's view of the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkView {
    pub interfaces: Vec<Interface>,
    /// Type of the best link that is up (`none` when no link is up).
    #[serde(rename = "type")]
    pub kind: String,
    pub metered: bool,
    /// Whether the hub answered its health check; `None` before a probe
    /// or for a standalone till.
    pub reachable: Option<bool>,
    pub signal: Option<i64>,
    /// `reachable`, `link_up_hub_down`, `no_link` or `unknown`.
    pub hub: String,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// Reads interfaces from a sysfs `class/net` folder and a `/proc/net/wireless` file.
pub fn interfaces(sys_class_net: &Path, proc_wireless: &Path) -> Vec<Interface> {
    let signals = wireless_signals(&read(proc_wireless).unwrap_or_default());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_class_net) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let dir = e.path();
        let ty: u32 = read(&dir.join("type")).and_then(|t| t.parse().ok()).unwrap_or(0);
        // 772 is ARPHRD_LOOPBACK: never a way to the hub.
        if ty == 772 || name == "lo" {
            continue;
        }
        let uevent = read(&dir.join("uevent")).unwrap_or_default();
        let kind = if dir.join("wireless").exists() || dir.join("phy80211").exists() || uevent.contains("DEVTYPE=wlan")
        {
            "wifi"
        } else if uevent.contains("DEVTYPE=wwan") || ty == 519 || ty == 530 {
            "cellular"
        } else if ty == 1 {
            "ethernet"
        } else {
            "other"
        };
        // IFF_UP and a carrier (or an operstate of up/unknown for virtual links).
        let flags = read(&dir.join("flags"))
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let oper = read(&dir.join("operstate")).unwrap_or_default();
        let carrier = read(&dir.join("carrier")).as_deref() == Some("1");
        let up = flags & 1 == 1 && (carrier || oper == "up") && oper != "down";
        out.push(Interface {
            signal: signals.iter().find(|(n, _)| *n == name).map(|(_, s)| *s),
            name,
            kind: kind.into(),
            up,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Parses /proc/net/wireless: `iface: status link level noise ...`.
fn wireless_signals(text: &str) -> Vec<(String, i64)> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let mut f = rest.split_whitespace();
            let _status = f.next()?;
            let link: f64 = f.next()?.trim_end_matches('.').parse().ok()?;
            Some((name.trim().to_string(), link as i64))
        })
        .collect()
}

/// The best link that is up: Ethernet, then Wi-Fi, then cellular, then other.
pub fn primary(ifaces: &[Interface]) -> Option<&Interface> {
    let rank = |k: &str| match k {
        "ethernet" => 0,
        "wifi" => 1,
        "cellular" => 2,
        _ => 3,
    };
    ifaces.iter().filter(|i| i.up).min_by_key(|i| rank(&i.kind))
}

/// Builds the view from interfaces, the configured metered setting and the
/// last probe.
pub fn view(ifaces: Vec<Interface>, metered_setting: &str, reachable: Option<bool>) -> NetworkView {
    view_with(ifaces, metered_setting, None, reachable)
}

/// As [`view`], with NetworkManager's answer (`None`: it does not run or
/// does not know), which decides under `auto`.
pub fn view_with(
    ifaces: Vec<Interface>,
    metered_setting: &str,
    nm_metered: Option<bool>,
    reachable: Option<bool>,
) -> NetworkView {
    let p = primary(&ifaces).cloned();
    let kind = p.as_ref().map_or("none".to_string(), |i| i.kind.clone());
    let metered = match metered_setting {
        "yes" => true,
        "no" => false,
        _ => nm_metered.unwrap_or(kind == "cellular"),
    };
    let hub = match (reachable, p.is_some()) {
        (Some(true), _) => "reachable",
        (Some(false), true) => "link_up_hub_down",
        (_, false) => "no_link",
        (None, true) => "unknown",
    };
    NetworkView {
        signal: p.as_ref().and_then(|i| i.signal),
        interfaces: ifaces,
        kind,
        metered,
        reachable,
        hub: hub.into(),
    }
}

/// The machine's real view.
pub fn current(metered_setting: &str, reachable: Option<bool>) -> NetworkView {
    let nm = if metered_setting == "auto" { nm_metered() } else { None };
    view_with(interfaces(Path::new("/sys/class/net"), Path::new("/proc/net/wireless")), metered_setting, nm, reachable)
}

/// How long NetworkManager's answer is reused: status is read several
/// times a second by the UI, and a process per read would be wasteful.
const NM_CACHE_MS: u64 = 5_000;
/// Longest the D-Bus call may take before NetworkManager counts as absent.
const NM_TIMEOUT_MS: u64 = 500;

static NM_CACHE: Mutex<Option<(Instant, Option<bool>)>> = Mutex::new(None);

/// NetworkManager's view of whether the primary connection is metered, over
/// the system D-Bus; `None` where it does not run or cannot tell.
pub fn nm_metered() -> Option<bool> {
    if let Ok(guard) = NM_CACHE.lock()
        && let Some((at, v)) = *guard
        && at.elapsed() < Duration::from_millis(NM_CACHE_MS)
    {
        return v;
    }
    let v = std::process::Command::new("busctl")
        .args([
            "--system",
            &format!("--timeout={}ms", NM_TIMEOUT_MS),
            "get-property",
            "org.freedesktop.NetworkManager",
            "/org/freedesktop/NetworkManager",
            "org.freedesktop.NetworkManager",
            "Metered",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| parse_nm_metered(&String::from_utf8_lossy(&o.stdout)));
    if let Ok(mut guard) = NM_CACHE.lock() {
        *guard = Some((Instant::now(), v));
    }
    v
}

/// Parses `busctl get-property ... Metered` output (`u N`): NetworkManager's
/// NMMetered enum is 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no.
pub fn parse_nm_metered(out: &str) -> Option<bool> {
    let mut words = out.split_whitespace();
    if words.next()? != "u" {
        return None;
    }
    match words.next()?.parse::<u32>().ok()? {
        1 | 3 => Some(true),
        2 | 4 => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_manager_metered_answers_are_parsed_and_decide_under_auto() {
        assert_eq!(parse_nm_metered("u 1\n"), Some(true));
        assert_eq!(parse_nm_metered("u 3"), Some(true));
        assert_eq!(parse_nm_metered("u 2"), Some(false));
        assert_eq!(parse_nm_metered("u 4\n"), Some(false));
        assert_eq!(parse_nm_metered("u 0"), None, "unknown falls back to the link type");
        assert_eq!(parse_nm_metered("s \"x\""), None);
        assert_eq!(parse_nm_metered(""), None);
        let eth = vec![Interface { name: "eth0".into(), kind: "ethernet".into(), up: true, signal: None }];
        assert!(view_with(eth.clone(), "auto", Some(true), None).metered, "NetworkManager says metered");
        assert!(!view_with(eth.clone(), "auto", None, None).metered, "ethernet is not metered by itself");
        assert!(!view_with(eth.clone(), "no", Some(true), None).metered, "the config overrides NetworkManager");
        let cell = vec![Interface { name: "wwan0".into(), kind: "cellular".into(), up: true, signal: None }];
        assert!(!view_with(cell, "auto", Some(false), None).metered, "NetworkManager overrides the cellular guess");
    }

    fn fake(root: &Path, name: &str, ty: u32, up: bool, extra: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), ty.to_string()).unwrap();
        std::fs::write(d.join("flags"), if up { "0x1003" } else { "0x1002" }).unwrap();
        std::fs::write(d.join("operstate"), if up { "up" } else { "down" }).unwrap();
        std::fs::write(d.join("carrier"), if up { "1" } else { "0" }).unwrap();
        for (f, v) in extra {
            if v.is_empty() {
                std::fs::create_dir_all(d.join(f)).unwrap();
            } else {
                std::fs::write(d.join(f), v).unwrap();
            }
        }
    }

    #[test]
    fn classifies_interfaces_from_sysfs() {
        let root = std::env::temp_dir().join(format!("till-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake(&root, "lo", 772, true, &[]);
        fake(&root, "eth0", 1, false, &[]);
        fake(&root, "wlan0", 1, true, &[("wireless", "")]);
        fake(&root, "wwan0", 1, true, &[("uevent", "DEVTYPE=wwan\nINTERFACE=wwan0")]);
        let wireless = root.with_extension("wireless");
        std::fs::write(
            &wireless,
            "Inter-| sta-|   Quality\n face | tus | link level noise\n wlan0: 0000   54.  -56.  -256 0 0 0 0 0 0\n",
        )
        .unwrap();
        let ifs = interfaces(&root, &wireless);
        let kinds: Vec<(&str, &str, bool)> = ifs.iter().map(|i| (i.name.as_str(), i.kind.as_str(), i.up)).collect();
        assert_eq!(kinds, vec![("eth0", "ethernet", false), ("wlan0", "wifi", true), ("wwan0", "cellular", true)]);
        assert_eq!(ifs[1].signal, Some(54));
        let v = view(ifs.clone(), "auto", Some(false));
        assert_eq!(v.kind, "wifi");
        assert!(!v.metered);
        assert_eq!(v.hub, "link_up_hub_down");
        let only_cell: Vec<Interface> = ifs.iter().filter(|i| i.kind == "cellular").cloned().collect();
        assert!(view(only_cell, "auto", Some(true)).metered, "cellular is metered under auto");
        assert_eq!(view(vec![], "no", None).hub, "no_link");
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(&wireless).unwrap();
    }
}
