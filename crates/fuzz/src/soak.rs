//! The soak driver: a parser's properties run for a million cases (by default) within a time
//! budget, in bounded memory, with the result as one table row.
//!
//! Owns [`Soak`]: a parser's name and its properties (a proptest strategy and a property
//! function each, the same ones its `proptest!` tests run), run round-robin in chunks of
//! [`CHUNK`] cases until the parser has had [`Budget::cases`] cases or [`Budget::time`] has
//! passed, whichever comes first. Each case is generated from a seeded ChaCha RNG, tested and
//! dropped (no shrinking, no persistence: a failure is reported with its input and the seed
//! reproduces the run), so memory does not grow with the case count: what a run holds is one
//! input at a time, its counters and at most [`MAX_EXAMPLES`] failure descriptions. The peak
//! resident set is measured per parser (Linux: `/proc/self/clear_refs` resets the high-water
//! mark, `VmHWM` in `/proc/self/status` reads it).
//!
//! The soak tests are `#[ignore]`d `soak_*` tests beside each parser's fuzz tests;
//! `scripts/fuzz-soak.sh` runs them one at a time and prints the table. Settings come from
//! the environment: `SPOTCHECK_SOAK_CASES` (cases per parser, default 1,000,000),
//! `SPOTCHECK_SOAK_SECONDS` (time budget per parser, default 1800), `SPOTCHECK_SOAK_SEED` (64
//! hex digits to replay a run; default: a fresh seed, printed), `SPOTCHECK_SOAK_REPORT` (a
//! file each parser's row is appended to).

use std::fmt::Debug;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases run for one property before the next property's turn (and the next budget check).
pub const CHUNK: u64 = 1000;

/// Failure descriptions kept per parser (all failures are counted).
pub const MAX_EXAMPLES: usize = 10;

/// Characters of an input's debug form kept in a failure description.
const MAX_SHOWN: usize = 2000;

/// How much to run per parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Cases per parser (spread evenly over its properties).
    pub cases: u64,
    /// Wall-clock time per parser; the run stops at the first chunk boundary past it.
    pub time: Duration,
}

impl Budget {
    /// `SPOTCHECK_SOAK_CASES` (default 1,000,000) and `SPOTCHECK_SOAK_SECONDS` (default 1800).
    ///
    /// # Panics
    ///
    /// When either is set to something other than a positive integer.
    pub fn from_env() -> Budget {
        let read = |var: &str, default: u64| match std::env::var(var) {
            Err(_) => default,
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => panic!("{var}={text:?} is not a positive integer"),
            },
        };
        Budget {
            cases: read("SPOTCHECK_SOAK_CASES", 1_000_000),
            time: Duration::from_secs(read("SPOTCHECK_SOAK_SECONDS", 1800)),
        }
    }
}

type RunChunk = Box<dyn FnMut(&mut TestRunner, u64, &mut Tally)>;

struct Property {
    name: &'static str,
    run: RunChunk,
    runner: TestRunner,
    done: u64,
    starved: bool,
}

#[derive(Default)]
struct Tally {
    cases: u64,
    rejected: u64,
    failures: u64,
    examples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, property: &str, why: String, input: &dyn Debug) {
        self.failures += 1;
        if self.examples.len() < MAX_EXAMPLES {
            let mut shown = format!("{input:?}");
            if let Some((cut, _)) = shown.char_indices().nth(MAX_SHOWN) {
                shown.truncate(cut);
                shown.push('…');
            }
            self.examples
                .push(format!("{property}: {why}; input: {shown}"));
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// One parser's soak: its properties, then [`Soak::run`].
pub struct Soak {
    parser: String,
    seed: [u8; 32],
    properties: Vec<Property>,
}

impl Soak {
    /// A soak of `parser`, seeded from `SPOTCHECK_SOAK_SEED` or afresh.
    ///
    /// # Panics
    ///
    /// When `SPOTCHECK_SOAK_SEED` is set to anything but 64 hex digits.
    pub fn new(parser: &str) -> Soak {
        let seed = match std::env::var("SPOTCHECK_SOAK_SEED") {
            Ok(hex) => parse_seed(&hex)
                .unwrap_or_else(|| panic!("SPOTCHECK_SOAK_SEED={hex:?} is not 64 hex digits")),
            Err(_) => fresh_seed(),
        };
        Soak::with_seed(parser, seed)
    }

    /// A soak of `parser` with this seed (the same seed replays the same cases).
    pub fn with_seed(parser: &str, seed: [u8; 32]) -> Soak {
        Soak {
            parser: parser.to_owned(),
            seed,
            properties: Vec::new(),
        }
    }

    /// Adds a property: `test` over inputs of `strategy`. A `Reject` (`prop_assume!`) counts
    /// as a rejection, not a case; a `Fail` or a panic counts as a failure.
    pub fn property<S>(
        mut self,
        name: &'static str,
        strategy: S,
        test: impl Fn(&S::Value) -> Result<(), TestCaseError> + 'static,
    ) -> Soak
    where
        S: Strategy + 'static,
    {
        let run: RunChunk = Box::new(move |runner: &mut TestRunner, n: u64, tally: &mut Tally| {
            for _ in 0..n {
                let value = match strategy.new_tree(runner) {
                    Ok(tree) => tree.current(),
                    Err(_) => {
                        tally.rejected += 1;
                        continue;
                    }
                };
                match catch_unwind(AssertUnwindSafe(|| test(&value))) {
                    Ok(Ok(())) => tally.cases += 1,
                    Ok(Err(TestCaseError::Reject(_))) => tally.rejected += 1,
                    Ok(Err(TestCaseError::Fail(why))) => {
                        tally.cases += 1;
                        tally.fail(name, why.to_string(), &value);
                    }
                    Err(panic) => {
                        tally.cases += 1;
                        tally.fail(name, format!("panicked: {}", panic_text(&*panic)), &value);
                    }
                }
            }
        });
        let mut seed = self.seed;
        seed[31] ^= self.properties.len() as u8;
        let runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        self.properties.push(Property {
            name,
            run,
            runner,
            done: 0,
            starved: false,
        });
        self
    }

    /// Runs the properties round-robin, [`CHUNK`] attempts at a time, until each has had its
    /// share of `budget.cases` or `budget.time` has passed. A rejected input does not count
    /// towards the share; a property whose whole chunk was rejected is not run again (it would
    /// spin), and the report falls short of its target.
    pub fn run(mut self, budget: Budget) -> Report {
        let share = budget.cases.div_ceil(self.properties.len().max(1) as u64);
        let measured = reset_peak_rss();
        let start = Instant::now();
        let mut tally = Tally::default();
        let mut out_of_time = false;
        'rounds: loop {
            let mut progressed = false;
            for p in &mut self.properties {
                if p.done >= share || p.starved {
                    continue;
                }
                if start.elapsed() >= budget.time {
                    out_of_time = true;
                    break 'rounds;
                }
                let before = tally.cases;
                (p.run)(&mut p.runner, CHUNK.min(share - p.done), &mut tally);
                let accepted = tally.cases - before;
                p.done += accepted;
                p.starved = accepted == 0;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        let properties = self.properties.iter().map(|p| p.name).collect();
        Report {
            parser: self.parser,
            properties,
            cases: tally.cases,
            rejected: tally.rejected,
            seconds: start.elapsed().as_secs_f64(),
            failures: tally.failures,
            examples: tally.examples,
            peak_rss_kib: if measured { peak_rss_kib() } else { None },
            seed: self.seed.iter().map(|b| format!("{b:02x}")).collect(),
            target: share * self.properties.len() as u64,
            out_of_time,
        }
    }

    /// [`Soak::run`] with [`Budget::from_env`], then [`Report::record`] and
    /// [`Report::check`]: what each `soak_*` test does.
    pub fn run_and_check(self) {
        let report = self.run(Budget::from_env());
        report.record();
        report.check();
    }
}

/// One parser's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The parser.
    pub parser: String,
    /// Its properties' names.
    pub properties: Vec<&'static str>,
    /// Cases tested (rejections excluded).
    pub cases: u64,
    /// Inputs rejected by a strategy's filter or `prop_assume!`.
    pub rejected: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Cases that failed or panicked.
    pub failures: u64,
    /// The first failures, with their inputs.
    pub examples: Vec<String>,
    /// Peak resident set during this parser's run, in KiB (`None`: not measurable here).
    pub peak_rss_kib: Option<u64>,
    /// The seed, 64 hex digits (`SPOTCHECK_SOAK_SEED` replays it).
    pub seed: String,
    /// The cases asked for (the budget's, rounded up to a multiple of the properties).
    pub target: u64,
    /// Whether the time budget ran out first.
    pub out_of_time: bool,
}

impl Report {
    /// Tab-separated: parser, cases, rejected, seconds, failures, peak RSS (MiB), status, seed.
    pub fn row(&self) -> String {
        let rss = self
            .peak_rss_kib
            .map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".to_owned());
        let status = if self.failures > 0 {
            "FAILED"
        } else if self.out_of_time {
            "OUT OF TIME"
        } else if self.cases < self.target {
            "SHORT (rejected inputs)"
        } else {
            "ok"
        };
        format!(
            "{}\t{}\t{}\t{:.1}\t{}\t{}\t{}\t{}",
            self.parser,
            self.cases,
            self.rejected,
            self.seconds,
            self.failures,
            rss,
            status,
            self.seed
        )
    }

    /// Prints the row (and any failures) and appends the row to `SPOTCHECK_SOAK_REPORT`.
    ///
    /// # Panics
    ///
    /// When that file cannot be written.
    pub fn record(&self) {
        println!("soak\t{}", self.row());
        for e in &self.examples {
            println!("  failure: {e}");
        }
        if let Ok(path) = std::env::var("SPOTCHECK_SOAK_REPORT") {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{}", self.row()));
            if let Err(e) = appended {
                panic!("cannot append to SPOTCHECK_SOAK_REPORT={path}: {e}");
            }
        }
    }

    /// Fails (panics) when a case failed or the budget ran out before the target.
    pub fn check(&self) {
        assert!(
            self.failures == 0,
            "{}: {} of {} cases failed (seed {}):\n{}",
            self.parser,
            self.failures,
            self.cases,
            self.seed,
            self.examples.join("\n")
        );
        assert!(
            !self.out_of_time,
            "{}: {} of {} cases in {:.0} s: the time budget ran out (raise \
             SPOTCHECK_SOAK_SECONDS or lower SPOTCHECK_SOAK_CASES)",
            self.parser, self.cases, self.target, self.seconds
        );
        assert!(
            self.cases >= self.target,
            "{}: {} of {} cases: a property rejected every input of a chunk ({} rejected)",
            self.parser,
            self.cases,
            self.target,
            self.rejected
        );
    }
}

fn parse_seed(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(seed)
}

fn fresh_seed() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    seed
}

/// Resets the peak-RSS mark of this process; false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: [u8; 32] = [7; 32];

    fn budget(cases: u64) -> Budget {
        Budget {
            cases,
            time: Duration::from_secs(600),
        }
    }

    #[test]
    fn every_property_gets_its_share_and_the_total_reaches_the_target() {
        let report = Soak::with_seed("numbers", SEED)
            .property("any u64", any::<u64>(), |_| Ok(()))
            .property("bytes", prop::collection::vec(any::<u8>(), 0..16), |_| {
                Ok(())
            })
            .run(budget(10_001));
        // 10,001 over two properties: 5,001 each.
        assert_eq!(report.cases, 10_002);
        assert_eq!(report.failures, 0);
        assert!(!report.out_of_time);
        assert_eq!(report.properties, vec!["any u64", "bytes"]);
        report.check();
        assert!(report.row().starts_with("numbers\t10002\t0\t"));
        assert!(report.row().contains("\tok\t"));
    }

    #[test]
    fn failures_and_panics_are_counted_with_their_inputs() {
        let report = Soak::with_seed("picky", SEED)
            .property("below 200", any::<u8>(), |b| {
                prop_assert!(*b < 200);
                Ok(())
            })
            .property("never 7", 0u8..10, |b| {
                assert_ne!(*b, 7, "seven");
                Ok(())
            })
            .run(budget(4000));
        assert_eq!(report.cases, 4000);
        // About 56/256 of the first property's 2000 cases and 1/10 of the second's.
        assert!(
            report.failures > 300 && report.failures < 800,
            "{}",
            report.failures
        );
        assert_eq!(report.examples.len(), MAX_EXAMPLES);
        assert!(report.examples.iter().any(|e| e.starts_with("below 200: ")));
        assert!(report.row().contains("\tFAILED\t"));
        let check = std::panic::catch_unwind(|| report.check());
        assert!(check.is_err(), "a failing soak fails its test");
    }

    #[test]
    fn a_panic_message_is_reported() {
        let report = Soak::with_seed("panics", SEED)
            .property("boom", Just(()), |_| panic!("boom at the parser"))
            .run(budget(3));
        assert_eq!((report.cases, report.failures), (3, 3));
        assert!(
            report.examples[0].contains("panicked: boom at the parser"),
            "{:?}",
            report.examples
        );
    }

    #[test]
    fn rejections_do_not_count_as_cases_and_cannot_spin() {
        let report = Soak::with_seed("assume", SEED)
            .property("even only", any::<u32>(), |n| {
                prop_assume!(n % 2 == 0);
                Ok(())
            })
            .run(budget(2000));
        assert_eq!(report.cases, 2000, "accepted cases reach the target");
        assert!(report.rejected > 1000, "{}", report.rejected);
        report.check();

        let report = Soak::with_seed("assume", SEED)
            .property("nothing", any::<u32>(), |_| {
                Err(TestCaseError::reject("no"))
            })
            .run(budget(1_000_000));
        assert_eq!(
            (report.cases, report.rejected),
            (0, CHUNK),
            "one chunk, then no more"
        );
        assert!(report.row().contains("\tSHORT (rejected inputs)\t"));
        assert!(std::panic::catch_unwind(|| report.check()).is_err());
    }

    #[test]
    fn the_time_budget_stops_the_run_between_chunks() {
        let report = Soak::with_seed("slow", SEED)
            .property("slow", Just(()), |_| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            })
            .run(Budget {
                cases: 1_000_000,
                time: Duration::from_millis(50),
            });
        assert!(report.out_of_time);
        assert_eq!(report.cases, CHUNK, "one chunk, then the budget check");
        assert!(report.row().contains("\tOUT OF TIME\t"));
        assert!(std::panic::catch_unwind(|| report.check()).is_err());
    }

    #[test]
    fn the_same_seed_replays_the_same_inputs() {
        use std::sync::{Arc, Mutex};
        let run = |seed| {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            Soak::with_seed("replay", seed)
                .property("record", any::<u64>(), move |n| {
                    s.lock().unwrap().push(*n);
                    Ok(())
                })
                .run(budget(50));
            let v = seen.lock().unwrap().clone();
            v
        };
        assert_eq!(run(SEED), run(SEED));
        assert_ne!(run(SEED), run([8; 32]));
        let report = Soak::with_seed("x", SEED).run(budget(1));
        assert_eq!(parse_seed(&report.seed), Some(SEED));
    }

    #[test]
    fn peak_memory_is_measured_on_linux() {
        let report = Soak::with_seed("memory", SEED)
            .property("alloc", Just(()), |_| {
                // 64 MiB touched, then freed: the high-water mark remembers it.
                let v = vec![1u8; 64 << 20];
                assert_eq!(v[v.len() - 1], 1);
                Ok(())
            })
            .run(budget(1));
        if cfg!(target_os = "linux") {
            let kib = report.peak_rss_kib.expect("VmHWM is readable on Linux");
            assert!(kib >= 64 * 1024, "{kib} KiB");
        }
    }
}
