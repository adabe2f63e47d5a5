//! What the benches print beside their timings: the machine's load average and this process's
//! CPU seconds (`mod common;` in a bench; a folder, so that cargo does not take it for a bench).

// Each bench uses the part it prints.
#![allow(dead_code)]

/// The 1-, 5- and 15-minute load averages, space-separated ("?" where /proc has none).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

/// CPU seconds (user + system) this process has used: /proc/self/stat's utime and stime, in
/// Linux's USER_HZ (100) ticks; 0 where there is none.
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces), from the state (field 3) on:
    // utime and stime (fields 14 and 15) are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    tick(11).zip(tick(12)).map_or(0.0, |(u, s)| (u + s) / 100.0)
}
