//! Seeded simulation runs split over the machine's two cores, for `make sim`'s binaries: each
//! seed's result is the same whichever thread ran it.

/// `run(seed)` for seeds `first..first + n`, on two threads, in seed order within each half.
pub fn on_two_threads<T: Send>(n: u64, first: u64, run: impl Fn(u64) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let run = &run;
        let halves: Vec<_> = [0, 1]
            .map(|h| {
                s.spawn(move || {
                    (0..n)
                        .filter(|i| i % 2 == h)
                        .map(|i| run(first + i))
                        .collect::<Vec<_>>()
                })
            })
            .into_iter()
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}
