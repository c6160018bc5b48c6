//! The seeded protocol simulation: real tills and a real SQLite hub over a
//! faulty simulated network (see `tillsync_sim::sim`).
//!
//! `cargo test -p tillsync-sim --test simulation` runs seeds
//! 0..TILL_SIM_SEEDS (default 1000); `TILL_SIM_SEED=N` replays one seed;
//! every fault kind runs by default; `TILL_SIM_FAULTS=-restore,-clone` (or
//! `none,+clone`) chooses fault kinds;
//! `TILL_SIM_TRACE=1` prints a failing seed's whole trace.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;
use tillsync_sim::sim::{Faults, HubTemplate, SimConfig, SimFailure, SimSummary, run};

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{key} must be a number, got '{v}'")))
}

#[test]
fn simulation() {
    // Every fault kind by default; `TILL_SIM_FAULTS=-restore,-clone` (for
    // example) switches some off while chasing a bug.
    let faults = Faults::parse(&std::env::var("TILL_SIM_FAULTS").unwrap_or_else(|_| "all".into())).unwrap();
    let seeds: Vec<u64> = match env_u64("TILL_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("TILL_SIM_SEEDS").unwrap_or(1000)).collect(),
    };
    let started = Instant::now();
    let template = HubTemplate::new().unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(seeds.len().max(1));
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<(u64, Result<SimSummary, SimFailure>)>> = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(&seed) = seeds.get(i) else { break };
                    let r = run(&SimConfig { seed, faults: faults.clone() }, &template);
                    results.lock().unwrap().push((seed, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(s, _)| *s);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut notes = 0;
    let mut failures: Vec<&SimFailure> = vec![];
    let (mut sales, mut steps) = (0, 0);
    for (_, r) in &results {
        match r {
            Ok(s) => {
                for (k, v) in &s.counts {
                    *counts.entry(k).or_default() += v;
                }
                notes += s.notes.len();
                sales += s.sales;
                steps += s.steps;
            }
            Err(f) => failures.push(f),
        }
    }
    println!(
        "simulation: {} seeds in {:.1}s on {threads} threads, {} failed; passing seeds: {steps} steps, {sales} sales, {notes} notes",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    println!("actions and faults of passing seeds: {counts:?}");
    if seeds.len() == 1
        && let Some((_, Ok(s))) = results.first()
    {
        for n in &s.notes {
            println!("note: {n}");
        }
    }
    if failures.is_empty() {
        return;
    }
    for f in failures.iter().take(3) {
        println!("\n{f}");
    }
    println!("\nfailing seeds, first problem of each:");
    for f in &failures {
        let first = f.message.lines().find(|l| l.trim_start().starts_with("- ")).unwrap_or(&f.message);
        println!("seed={}: {}", f.seed, first.trim_start().trim_start_matches("- "));
    }
    let list: Vec<String> = failures.iter().map(|f| f.seed.to_string()).collect();
    panic!(
        "{} of {} seeds failed: {}\nfirst: seed={}: {}",
        failures.len(),
        seeds.len(),
        list.join(" "),
        failures[0].seed,
        failures[0].message
    );
}
