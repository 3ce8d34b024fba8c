//! Process resource sampling for the OpenTelemetry process semantic-convention metrics.
//!
//! On Linux the figures come from procfs (`/proc/self/stat`, `/proc/self/status` and
//! `/proc/self/fd`), read with plain file I/O: no libc, no unsafe code, no extra
//! dependencies. Elsewhere [`sample`] returns `None` and no process metrics are reported.
//!
//! | field                             | metric                                |
//! |-----------------------------------|---------------------------------------|
//! | [`ProcessSample::cpu_user`]       | `process.cpu.time{cpu.mode="user"}`   |
//! | [`ProcessSample::cpu_system`]     | `process.cpu.time{cpu.mode="system"}` |
//! | [`ProcessSample::resident_bytes`] | `process.memory.usage`                |
//! | [`ProcessSample::virtual_bytes`]  | `process.memory.virtual`              |
//! | [`ProcessSample::open_fds`]       | `process.unix.file_descriptor.count`  |
//! | [`ProcessSample::threads`]        | `process.thread.count`                |
//! | [`CpuUtilization::update`]        | `process.cpu.utilization`             |

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessSample {
    /// CPU time spent in user mode: `process.cpu.time{cpu.mode="user"}`.
    pub(crate) cpu_user: Duration,
    /// CPU time spent in kernel mode: `process.cpu.time{cpu.mode="system"}`.
    pub(crate) cpu_system: Duration,
    /// Resident set size in bytes (`VmRSS`): `process.memory.usage`.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size in bytes (`VmSize`): `process.memory.virtual`.
    pub(crate) virtual_bytes: u64,
    /// Open file descriptors (entries of `/proc/self/fd`): `process.unix.file_descriptor.count`.
    /// `None` when that directory cannot be listed (some sandboxes hide it) while the rest could be read.
    pub(crate) open_fds: Option<u64>,
    /// Threads in the process: `process.thread.count`.
    pub(crate) threads: u64,
}

impl ProcessSample {
    /// User plus system CPU time.
    fn cpu_total(&self) -> Duration {
        self.cpu_user.saturating_add(self.cpu_system)
    }
}

/// Reads the current process's resources; None where /proc is unavailable (non-Linux) or unreadable.
///
/// This does blocking file I/O on procfs (three small reads, a few microseconds), so it belongs in a
/// periodic metrics callback, not on a request path.
#[cfg(target_os = "linux")]
pub(crate) fn sample() -> Option<ProcessSample> {
    let (utime, stime) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let (resident_bytes, virtual_bytes, threads) = parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)?;
    Some(ProcessSample {
        cpu_user: ticks_to_duration(utime),
        cpu_system: ticks_to_duration(stime),
        resident_bytes,
        virtual_bytes,
        open_fds: count_open_fds(),
        threads,
    })
}

/// Reads the current process's resources; None where /proc is unavailable (non-Linux) or unreadable.
///
/// Not Linux: there is no procfs to read, so this is always `None`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sample() -> Option<ProcessSample> {
    None
}

/// Clock ticks per second in which `/proc/<pid>/stat` reports CPU times.
///
/// This is `USER_HZ`, which the kernel fixes at 100 in its user-space ABI on every mainstream
/// architecture (x86, x86-64, arm, aarch64, riscv, powerpc, s390x, ...) independently of the internal
/// `CONFIG_HZ`. Asking `sysconf(_SC_CLK_TCK)` would need libc and unsafe code, which this crate avoids.
#[cfg(any(target_os = "linux", test))]
const USER_HZ: u64 = 100;

/// Converts `USER_HZ` clock ticks to a duration.
#[cfg(any(target_os = "linux", test))]
fn ticks_to_duration(ticks: u64) -> Duration {
    const NANOS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;
    Duration::from_secs(ticks / USER_HZ) + Duration::from_nanos((ticks % USER_HZ) * NANOS_PER_TICK)
}

/// Counts the open file descriptors by listing `/proc/self/fd`.
///
/// Listing the directory itself holds one descriptor open, which appears among the entries; it is
/// not counted.
#[cfg(target_os = "linux")]
fn count_open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let mut count: u64 = 0;
    for entry in entries {
        entry.ok()?;
        count += 1;
    }
    Some(count.saturating_sub(1))
}

/// Parses `/proc/self/stat` into `(utime, stime)`, both in `USER_HZ` clock ticks.
///
/// The second field, `comm`, is the executable name in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted from after the last `)`. There `state` (field 3) comes
/// first, and `utime` and `stime` are fields 14 and 15.
#[cfg(any(target_os = "linux", test))]
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let (_, after_comm) = text.rsplit_once(')')?;
    // Field 3 (state) is index 0 here, so field N is index N - 3.
    let mut fields = after_comm.split_ascii_whitespace().skip(14 - 3);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Parses `/proc/self/status` into `(resident_bytes, virtual_bytes, threads)`.
///
/// Reads the `VmRSS` and `VmSize` lines (given in kB, returned as bytes, kB * 1024) and the `Threads`
/// line. `None` if any of the three is missing or malformed (kernel threads, for one, have no `Vm*`
/// lines).
#[cfg(any(target_os = "linux", test))]
fn parse_status(text: &str) -> Option<(u64, u64, u64)> {
    /// The number in a `VmXxx:   1234 kB` value, as bytes.
    fn kib(value: &str) -> Option<u64> {
        let number = value.trim().strip_suffix("kB")?.trim_end();
        number.parse::<u64>().ok()?.checked_mul(1024)
    }

    let (mut resident, mut virt, mut threads) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "VmRSS" => resident = Some(kib(value)?),
            "VmSize" => virt = Some(kib(value)?),
            "Threads" => threads = Some(value.trim().parse().ok()?),
            _ => {}
        }
    }
    Some((resident?, virt?, threads?))
}

/// The CPUs this process may run on, as `std::thread::available_parallelism` reports them (affinity
/// mask and cgroup quota included); 1 if that cannot be determined.
fn available_cpus() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    f64::from(u32::try_from(cpus).unwrap_or(u32::MAX))
}

/// process.cpu.utilization: CPU time used since the previous call divided by the elapsed wall time and
/// the number of CPUs available (`std::thread::available_parallelism`). The first call records the
/// baseline and returns None.
///
/// Because CPU time advances in 10 ms ticks and a cgroup quota is rounded to whole CPUs, a reading over
/// a short interval can come out slightly above 1; it is reported as computed, not clamped.
#[derive(Debug)]
pub(crate) struct CpuUtilization {
    /// Wall instant and total CPU time of the previous update.
    previous: Mutex<Option<(Instant, Duration)>>,
}

impl CpuUtilization {
    /// A tracker with no baseline yet: its first [`update`](Self::update) returns `None`.
    pub(crate) fn new() -> Self {
        Self {
            previous: Mutex::new(None),
        }
    }

    /// Records `sample` taken at `now` as the new baseline and returns the utilization since the
    /// previous one. `now` and the sample's total cpu time passed in, so tests control the clock.
    ///
    /// `None` on the first call, and when `now` is not after the previous instant (no elapsed time to
    /// divide by).
    pub(crate) fn update(&self, now: Instant, sample: &ProcessSample) -> Option<f64> {
        let cpu = sample.cpu_total();
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace((now, cpu));
        let (then, cpu_then) = previous?;
        let elapsed = now.checked_duration_since(then).filter(|elapsed| !elapsed.is_zero())?;
        let used = cpu.saturating_sub(cpu_then);
        Some(used.as_secs_f64() / elapsed.as_secs_f64() / available_cpus())
    }
}

impl Default for CpuUtilization {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status text as Linux writes it, trimmed to the interesting lines and some neighbours.
    const STATUS: &str = "Name:\tmy server\n\
        Umask:\t0022\n\
        State:\tS (sleeping)\n\
        Pid:\t4242\n\
        VmPeak:\t  250000 kB\n\
        VmSize:\t  245760 kB\n\
        VmLck:\t       0 kB\n\
        VmHWM:\t   20480 kB\n\
        VmRSS:\t   16384 kB\n\
        RssAnon:\t    8192 kB\n\
        Threads:\t7\n\
        SigQ:\t0/63448\n";

    /// The CPU count computed independently of the code under test, the same way.
    fn ncpus() -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        f64::from(u32::try_from(cpus).expect("fewer than 2^32 CPUs"))
    }

    fn sample_with_cpu(user: Duration, system: Duration) -> ProcessSample {
        ProcessSample {
            cpu_user: user,
            cpu_system: system,
            resident_bytes: 1,
            virtual_bytes: 1,
            open_fds: Some(3),
            threads: 1,
        }
    }

    #[test]
    fn parse_stat_splits_after_the_last_paren_when_comm_has_spaces_and_parens() {
        let line = "4242 (my (weird) proc) x) S 1 4242 4242 0 -1 4194560 1500 0 3 0 250 75 0 0 20 0 7 0 \
                    123456 251658240 4096 18446744073709551615 1 1 0 0 0 0 0 4096 17638 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_stat(line), Some((250, 75)));
    }

    #[test]
    fn parse_stat_rejects_truncated_or_garbled_lines() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("4242 no parens S 1 2 3"), None);
        assert_eq!(
            parse_stat("4242 (short) S 1 4242 4242 0 -1 4194560 1500 0 3 0 250"),
            None
        );
        assert_eq!(
            parse_stat("4242 (bad) S 1 4242 4242 0 -1 4194560 1500 0 3 0 x 75 0"),
            None
        );
    }

    #[test]
    fn parse_status_returns_rss_and_vmsize_in_bytes_and_threads() {
        assert_eq!(parse_status(STATUS), Some((16_384 * 1024, 245_760 * 1024, 7)));
    }

    #[test]
    fn parse_status_is_none_when_a_field_is_missing() {
        let kernel_thread = "Name:\tkworker/0:1\nState:\tI (idle)\nThreads:\t1\n";
        assert_eq!(parse_status(kernel_thread), None);
        assert_eq!(parse_status(&STATUS.replace("Threads:\t7\n", "")), None);
        assert_eq!(parse_status(&STATUS.replace("16384 kB", "lots")), None);
    }

    #[test]
    fn ticks_convert_at_user_hz() {
        assert_eq!(ticks_to_duration(0), Duration::ZERO);
        assert_eq!(ticks_to_duration(250), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1), Duration::from_millis(10));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sample_on_linux_returns_plausible_values() {
        let sample = sample().expect("/proc/self is readable on Linux");
        assert!(sample.resident_bytes > 0, "{sample:?}");
        assert!(sample.virtual_bytes >= sample.resident_bytes, "{sample:?}");
        assert!(sample.threads >= 1, "{sample:?}");
        assert!(sample.open_fds.expect("/proc/self/fd is listable") >= 3, "{sample:?}");
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn sample_off_linux_is_none() {
        assert_eq!(sample(), None);
    }

    #[test]
    fn utilization_first_update_only_records_the_baseline() {
        let utilization = CpuUtilization::default();
        let start = Instant::now();
        assert_eq!(
            utilization.update(start, &sample_with_cpu(Duration::from_secs(1), Duration::ZERO)),
            None
        );
    }

    #[test]
    fn utilization_is_cpu_time_over_wall_time_over_cpus() {
        let utilization = CpuUtilization::new();
        let start = Instant::now();
        let (user, system) = (Duration::from_millis(1200), Duration::from_millis(300));
        assert_eq!(utilization.update(start, &sample_with_cpu(user, system)), None);

        // +0.3 s user and +0.2 s system over one second of wall time.
        let later = sample_with_cpu(user + Duration::from_millis(300), system + Duration::from_millis(200));
        let ratio = utilization
            .update(start + Duration::from_secs(1), &later)
            .expect("baseline was recorded");
        let ncpus = ncpus();
        assert!((ratio - 0.5 / ncpus).abs() < 1e-12, "{ratio} != 0.5 / {ncpus}");
    }

    #[test]
    fn utilization_is_none_when_no_time_elapsed() {
        let utilization = CpuUtilization::new();
        let start = Instant::now();
        let cpu = sample_with_cpu(Duration::from_secs(1), Duration::ZERO);
        assert_eq!(utilization.update(start, &cpu), None);
        assert_eq!(utilization.update(start, &cpu), None);
        // The second call still moved the baseline, so the next interval is measured from it.
        let later = sample_with_cpu(Duration::from_secs(2), Duration::ZERO);
        let ratio = utilization
            .update(start + Duration::from_secs(2), &later)
            .expect("baseline was recorded");
        let ncpus = ncpus();
        assert!((ratio - 0.5 / ncpus).abs() < 1e-12, "{ratio} != 0.5 / {ncpus}");
    }
}
