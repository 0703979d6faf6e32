import ArgumentParser
import CatenaCore
import CatenaSimulation
import Foundation

/// `catena simulate`: runs seeded whole-cluster simulations (``ClusterSimulation``) and reports
/// the seeds that broke an invariant.
struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run seeded whole-cluster simulations and report any broken invariant.",
        discussion: """
            Each seed is one deterministic run of the real master and node state machines over a \
            simulated network, disks and clients, with faults (kills, pauses, partitions, failing \
            and full disks, master restarts, nodes added and removed), then healing and checks: \
            linearizable histories, every acknowledged write on every member, identical members, \
            no LSN naming two records, no configuration going back, every conditional write in the \
            log met its condition there and none refused is in it. The same seed replays the same \
            run: `--seeds 1 --from SEED --trace` prints it. Exits 1 if any seed failed.
            """
    )

    @Option(help: "How many seeds to run.") var seeds: UInt64 = 1000
    @Option(help: "The first seed.") var from: UInt64 = 0
    @Option(help: "Runs in parallel (default: the number of CPUs).") var jobs: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Simulated milliseconds of faults per run.") var chaosMs: UInt64 = 6000
    @Flag(help: "Print the trace of every failing seed (of the one seed, failing or not, with --seeds 1).") var trace = false
    @Flag(help: "Stop at the first failing seed (the runs in flight finish, so the lowest failing seed is exact).") var stop = false

    func validate() throws {
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        guard (1...256).contains(jobs) else { throw ValidationError("--jobs must be 1 ... 256, not \(jobs)") }
        guard chaosMs >= 100 else { throw ValidationError("--chaos-ms must be at least 100") }
        guard from <= UInt64.max - seeds else { throw ValidationError("--from + --seeds overflows") }
    }

    func run() async throws {
        let settings = {
            var s = SimulationSettings()
            s.chaos = chaosMs * 1_000_000
            return s
        }()
        let started = ContinuousClock.now
        let progress = FileHandle.standardError
        let interactive = isatty(2) == 1
        var totals = SimulationStats()
        var failed: [(UInt64, String)] = []
        var done: UInt64 = 0
        let (trace, stop, seeds, from, jobs) = (self.trace, self.stop, self.seeds, self.from, self.jobs)
        await withTaskGroup(of: (UInt64, SimulationResult).self) { group in
            var next = from
            let end = from + seeds
            var stopping = false
            func launch() {
                guard next < end, !stopping else { return }
                let seed = next
                next += 1
                group.addTask { (seed, ClusterSimulation(seed: seed, settings: settings).run()) }
            }
            for _ in 0..<jobs { launch() }
            while let (seed, result) = await group.next() {
                done += 1
                totals.add(result.stats)
                if !result.violations.isEmpty {
                    failed.append((seed, result.violations[0]))
                    print("seed \(seed) FAILED: \(result.violations.joined(separator: "\n  "))")
                }
                if trace && (!result.violations.isEmpty || seeds == 1) {
                    var full = settings
                    full.traceLimit = .max
                    let traced = ClusterSimulation(seed: seed, settings: full, tracing: true).run()
                    print(traced.trace.joined(separator: "\n"))
                }
                // Seeds run in order: the runs in flight (lower seeds among them) finish, so the
                // lowest failing seed is exact.
                if !result.violations.isEmpty && stop { stopping = true }
                if interactive && (done % 100 == 0 || done == seeds) {
                    progress.write(Data("\r\(done)/\(seeds) seeds, \(failed.count) failed".utf8))
                }
                launch()
            }
        }
        if interactive { progress.write(Data("\n".utf8)) }
        let seconds = Double((ContinuousClock.now - started).nanosecondsClamped) / 1e9
        print("\(done) seeds from \(from) in \(String(format: "%.1f", seconds)) s (\(String(format: "%.0f", Double(done) / max(seconds, 0.001))) seeds/s), \(failed.count) failed")
        print(totals)
        if let first = failed.map(\.0).min() {
            print("failing seeds: \(failed.map(\.0).sorted().map(String.init).joined(separator: " "))")
            print("first failing seed: \(first) (the \(first - from + 1)th seed run)")
            throw ExitCode(1)
        }
    }
}
