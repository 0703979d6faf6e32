import CatenaSimulation
import Foundation
import Testing

/// Seeded whole-cluster simulations (``ClusterSimulation``): 2,000 seeds in CI, in shards that
/// run in parallel. A failing seed is run again with tracing and reported with its trace;
/// `CATENA_SIM_SEED=n` replays one seed, `CATENA_SIM_SEEDS=n` changes how many run
/// (`catena simulate --seeds N --from S` runs millions).
@Suite("Whole-cluster simulation")
struct ClusterSimulationTests {
    static let seeds: UInt64 = ProcessInfo.processInfo.environment["CATENA_SIM_SEEDS"].flatMap(UInt64.init) ?? 2000
    static let shards = 8

    @Test(arguments: 0..<shards)
    func seededRunsKeepEveryInvariant(shard: Int) {
        var seeds = Array(stride(from: UInt64(shard), to: Self.seeds, by: Self.shards))
        if let only = ProcessInfo.processInfo.environment["CATENA_SIM_SEED"].flatMap(UInt64.init) {
            seeds = only % UInt64(Self.shards) == UInt64(shard) ? [only] : []
        }
        var totals = SimulationStats()
        for seed in seeds {
            let result = ClusterSimulation(seed: seed).run()
            totals.add(result.stats)
            if !result.violations.isEmpty {
                let traced = ClusterSimulation(seed: seed, tracing: true).run()
                Issue.record("""
                    seed \(seed) (replay: CATENA_SIM_SEED=\(seed), or catena simulate --seeds 1 --from \(seed) --trace): \
                    \(result.violations.joined(separator: "\n"))
                    --- trace (last \(traced.trace.count) events) ---
                    \(traced.trace.joined(separator: "\n"))
                    """)
                return
            }
        }
        guard seeds.count >= 200 else { return }
        // The runs exercise what they claim to.
        let runs = seeds.count
        #expect(totals.kills > runs / 2, "\(totals)")
        #expect(totals.pauses > runs / 2, "\(totals)")
        #expect(totals.masterKills > runs / 10 && totals.masterPauses > runs / 10, "\(totals)")
        #expect(totals.partitions > runs, "\(totals)")
        #expect(totals.syncFailures > runs / 10 && totals.diskFulls > runs / 10, "\(totals)")
        #expect(totals.added > runs / 10 && totals.removed > runs / 20, "\(totals)")
        #expect(totals.reconfigurations > runs * 2, "\(totals)")
        #expect(totals.truncations > runs / 20 && totals.discards > runs / 100 && totals.catchUpRecords > runs * 10, "\(totals)")
        #expect(totals.staleRestores > runs / 20, "\(totals)")
        #expect(totals.writesAcknowledged > runs * 20 && totals.readsAnswered > runs * 10, "\(totals)")
        #expect(totals.conditionalApplied > runs * 2 && totals.conditionalRefused > runs * 2, "\(totals)")
        #expect(totals.writesSettled > runs / 4, "\(totals)")
    }

    /// The targeted fault the random ones almost never hit: a new head's group commit held back
    /// and the head killed within it (seed 1 has one — every change to what the simulation does moves the runs, so this seed is picked again then).
    @Test func aNewHeadIsKilledBeforeItsFirstGroupCommit() {
        let r = ClusterSimulation(seed: 1, tracing: true).run()
        #expect(r.violations.isEmpty, "\(r.violations)")
        #expect(r.stats.newHeadKills == 1, "\(r.stats)")
        #expect(r.trace.contains { $0.contains("a new head's group commit is held back") })
    }

    @Test func theSameSeedReplaysTheSameRun() {
        let a = ClusterSimulation(seed: 42, tracing: true).run()
        let b = ClusterSimulation(seed: 42, tracing: true).run()
        #expect(a.trace == b.trace && a.stats == b.stats)
        #expect(a.trace.count > 100)
    }
}
