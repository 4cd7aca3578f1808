//! The compute threads. A job runs on one thread of a rayon pool while the
//! others wait for the work it splits off (the matrix kernel's tasks, burn's
//! and `gemm`'s parallel loops) by spinning in rayon's work stealing instead
//! of sleeping. A decode step of a small model is hundreds of parallel
//! regions of tens of microseconds each, separated by short serial ops;
//! waking a sleeping thread for each one costs about as much as the region
//! itself, so the second core arrived too late to help. After a longer idle
//! spell (reading a layer from disk, waiting for the user) the helpers back
//! off to short sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::{ThreadPool, Yield};

/// Idle time a helper spins through before it yields its core to other
/// threads of the process (the layer readers).
const SPIN: Duration = Duration::from_micros(100);

/// Idle time after which a helper naps instead of yielding.
const YIELD: Duration = Duration::from_millis(5);

/// One nap of an idle helper.
const NAP: Duration = Duration::from_micros(250);

/// Runs `job` on one thread of `pool`, the pool's other threads helping
/// with the parallel work it starts until it returns (or panics).
pub fn run_with_helpers<R, J>(pool: &ThreadPool, job: J) -> R
where
    J: FnOnce() -> R + Send,
    R: Send,
{
    let job = Mutex::new(Some(job));
    let done = AtomicBool::new(false);
    let mut results = pool.broadcast(|context| {
        if context.index() != 0 {
            help_until(&done);
            return None;
        }
        let _finished = SetOnDrop(&done);
        let job = job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .expect("the job runs once, on thread 0");
        Some(job())
    });
    results
        .swap_remove(0)
        .expect("thread 0 ran the job and returned its result")
}

/// Sets its flag when dropped, so the helpers stop even if the job panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Steals and runs the pool's jobs until `done`; spins while idle, then
/// yields the core, then naps.
fn help_until(done: &AtomicBool) {
    let mut idle_since: Option<Instant> = None;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(Yield::Executed) {
            idle_since = None;
            continue;
        }
        let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
        } else if idle < YIELD {
            std::thread::yield_now();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn the_job_runs_once_and_its_parallel_work_is_shared() {
        for threads in [1, 2, 3] {
            let sum = run_with_helpers(&pool(threads), || {
                (0..10_000u64).into_par_iter().map(|i| i * i).sum::<u64>()
            });
            assert_eq!(sum, (0..10_000u64).map(|i| i * i).sum::<u64>());
        }
    }

    #[test]
    fn a_panicking_job_releases_the_helpers() {
        let pool = pool(2);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_with_helpers(&pool, || panic!("job failed"))
        }));
        assert!(result.is_err());
        assert_eq!(run_with_helpers(&pool, || 7), 7);
    }
}
