import CatenaCore
import CatenaStorage
import Logging
import Synchronization

/// The load generator behind `catena bench-compaction`: what a compaction costs the writers
/// and readers of one ``Store``, measured in one run.
///
/// It opens a fresh store, fills it with overwrites of a small key space (so most of the log
/// is garbage), then runs a steady load — ``Configuration/writers`` tasks each appending one
/// `put` per call, overwriting random keys, and ``Configuration/readers`` tasks reading random
/// keys whole — through three phases: **before** (``Configuration/phase``), **during** (from
/// raising the commit watermark to the log's end and starting ``Store/compact()`` until it
/// returns) and **after** (``Configuration/phase`` again). Every record carries the wall clock
/// as its head timestamp, as on a node, so the request-id window
/// (``Configuration/requestWindow``) holds back the last records, as it would. Throughput is
/// counted per phase and per 250 ms interval; the report gives each phase's rates, the ratios
/// during/before and after/before, the slowest interval during the compaction, and per-phase
/// write latency. Removes what it wrote, also on failure.
public struct CompactionBenchmark: Sendable {
    /// What to run. Every field has a default except the directory.
    public struct Configuration: Sendable {
        /// A directory on the disk to measure; the benchmark makes and removes a subdirectory.
        public var directory: String
        /// Bytes per value. Default 4 KiB.
        public var valueSize: Int = 4 << 10
        /// Distinct keys; their newest versions are the live data. Default 131,072: with the
        /// default fill, about 40% of the log is live when the compaction starts — near the
        /// node's default trigger (collectable garbage at half the sealed log).
        public var keySpace: Int = 131_072
        /// Bytes of values written before the measured phases (overwrites, so garbage). Default 1 GiB.
        public var fillBytes: Int = 1 << 30
        /// Concurrent writer tasks. Default 32.
        public var writers: Int = 32
        /// Concurrent reader tasks. Default 4.
        public var readers: Int = 4
        /// Length of the phases before and after the compaction. Default 5 s.
        public var phase: Duration = .seconds(5)
        /// The store's segment size. Default 64 MiB (the store's default).
        public var segmentSize: Int = 64 << 20
        /// The store's request-id window. Default 2 s, so that the fill is outside it when the
        /// compaction starts (a node keeps 60 s).
        public var requestWindow: Duration = .seconds(2)
        /// Called with progress lines; nil: quiet.
        public var progress: (@Sendable (String) -> Void)?
        /// The logger handed to the store. Default: warnings.
        public var logger: Logger = .benchmark(level: .warning)

        /// A configuration with the defaults above.
        public init(directory: String) {
            self.directory = directory
        }

        /// A description of the first problem with this configuration, or nil.
        public var problem: String? {
            if valueSize < 1 || valueSize > 16 << 20 { return "value size must be 1 byte ... 16 MiB, not \(valueSize)" }
            if keySpace < 1 { return "key space must be at least 1" }
            if fillBytes < 0 { return "fill volume cannot be negative" }
            if writers < 1 || writers > 10_000 { return "writers must be 1 ... 10000, not \(writers)" }
            if readers < 0 || readers > 10_000 { return "readers must be 0 ... 10000, not \(readers)" }
            if phase <= .zero { return "phases must last longer than 0 s" }
            if segmentSize < 4096 { return "segment size must be at least 4096 bytes" }
            if requestWindow < .zero { return "the request-id window cannot be negative" }
            return nil
        }
    }

    /// One phase's figures.
    public struct Phase: Hashable, Sendable {
        /// How long it lasted.
        public var elapsed: Duration
        /// Puts made durable.
        public var puts: Int
        /// Gets answered (whole values read and verified).
        public var gets: Int
        /// Latency of the puts that completed in it.
        public var putLatency: LatencySummary

        /// Durable puts per second.
        public var putsPerSecond: Double { Double(puts) / max(1e-9, elapsed.secondsValue) }
        /// Gets per second.
        public var getsPerSecond: Double { Double(gets) / max(1e-9, elapsed.secondsValue) }
    }

    /// What a run measured.
    public struct Report: Hashable, Sendable {
        /// The configuration's main figures, for the report's header.
        public var valueSize: Int
        public var keySpace: Int
        public var fillBytes: Int
        public var writers: Int
        public var readers: Int
        public var segmentSize: Int
        public var requestWindow: Duration
        /// The phases.
        public var before: Phase
        public var during: Phase
        public var after: Phase
        /// The lowest put rate over any 250 ms interval that lies within the compaction, per second.
        public var slowestIntervalDuring: Double?
        /// The put rate of every 250 ms interval that lies within the compaction, in order, per second.
        public var intervalsDuring: [Double]
        /// What the compaction did.
        public var compaction: CompactionReport
        /// The store's garbage estimate when the compaction started.
        public var garbageBefore: GarbageReport
        /// Bytes of all segments before and after the compaction (the log grows meanwhile).
        public var logBytesBefore: UInt64
        public var logBytesAfter: UInt64

        /// Puts per second during the compaction over before it.
        public var duringRatio: Double { during.putsPerSecond / max(1e-9, before.putsPerSecond) }
        /// Puts per second after the compaction over before it.
        public var afterRatio: Double { after.putsPerSecond / max(1e-9, before.putsPerSecond) }
        /// Gets per second during the compaction over before it (nil without readers).
        public var readDuringRatio: Double? { before.gets == 0 ? nil : during.getsPerSecond / before.getsPerSecond }

        /// The report as text.
        public func table() -> String {
            func ms(_ ns: Int64) -> String { String(format: "%.2f", Double(ns) / 1e6) }
            func row(_ name: String, _ p: Phase) -> String {
                [name.padding(toLength: 8, withPad: " ", startingAt: 0),
                 String(format: "%8.2f", p.elapsed.secondsValue), String(format: "%10.0f", p.putsPerSecond),
                 String(format: "%10.0f", p.getsPerSecond), ms(p.putLatency.p50).leftPadded(9), ms(p.putLatency.p99).leftPadded(9),
                 ms(p.putLatency.max).leftPadded(9)].joined(separator: " ")
            }
            var lines: [String] = []
            lines.append("phase          s     puts/s     gets/s   p50 ms    p99 ms    max ms")
            lines.append(String(repeating: "-", count: 68))
            lines.append(row("before", before))
            lines.append(row("during", during))
            lines.append(row("after", after))
            lines.append("")
            lines.append(String(format: "write throughput: during/before %.2f, after/before %.2f", duringRatio, afterRatio)
                         + (readDuringRatio.map { String(format: "; reads during/before %.2f", $0) } ?? ""))
            if let slow = slowestIntervalDuring {
                lines.append(String(format: "slowest 250 ms during the compaction: %.0f puts/s (%.2f of before)", slow, slow / max(1e-9, before.putsPerSecond)))
                lines.append("puts/s per 250 ms during the compaction: " + intervalsDuring.map { String(format: "%.0f", $0) }.joined(separator: " "))
            }
            let mib = { (b: UInt64) in String(format: "%.1f MiB", Double(b) / 1_048_576) }
            lines.append("compaction: \(compaction.segmentsRewritten) segments rewritten, \(compaction.recordsDropped) records dropped, "
                         + "\(mib(compaction.bytesBefore)) -> \(mib(compaction.bytesAfter)), "
                         + String(format: "%.2f s", during.elapsed.secondsValue))
            lines.append("garbage estimate at the start: \(mib(garbageBefore.collectableBytes)) collectable of \(mib(garbageBefore.sealedBytes)) sealed "
                         + String(format: "(ratio %.2f)", garbageBefore.collectableRatio) + "; log \(mib(logBytesBefore)) -> \(mib(logBytesAfter))")
            lines.append("value \(valueSize) B, \(keySpace) keys, fill \(mib(UInt64(fillBytes))), \(writers) writers, \(readers) readers, "
                         + "segments \(mib(UInt64(segmentSize))), request-id window \(requestWindow)")
            return lines.joined(separator: "\n")
        }
    }

    /// What to run.
    public var configuration: Configuration

    /// Creates a benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Runs the benchmark and reports.
    public func run() async throws(CatenaError) -> Report {
        let c = configuration
        if let problem = c.problem { throw CatenaError(.invalidArgument, problem) }
        let storeDir = c.directory + "/compaction-store"
        try ScratchSpace.removeTree(storeDir)
        var sc = StoreConfiguration(directory: storeDir, clusterID: "bench", nodeID: "bench-compaction")
        sc.segmentSize = c.segmentSize
        sc.requestWindow = c.requestWindow
        let store = try await Store.open(sc, logger: c.logger)
        do {
            let report = try await measure(store)
            await store.close()
            try ScratchSpace.removeTree(storeDir)
            return report
        } catch {
            await store.close()
            try? ScratchSpace.removeTree(storeDir)
            throw error
        }
    }

    private func measure(_ store: Store) async throws(CatenaError) -> Report {
        let c = configuration
        var value = [UInt8](repeating: 0, count: c.valueSize)
        var rng = SplitMix64(seed: 42)
        rng.fill(&value)
        let appender = Appender(store: store, value: value, encoding: .outsideLock, timestamp: { wallClockNanoseconds() })
        let keys = try (0..<c.keySpace).map { i throws(CatenaError) in try Key("bench/compaction/\(i)") }

        // Fill: overwrites, so most of the log is garbage.
        let fillCount = c.fillBytes / c.valueSize
        c.progress?("fill: \(fillCount) puts of \(c.valueSize) B over \(c.keySpace) keys")
        let next = Counter()
        try await runTasks(c.writers) { () async throws(CatenaError) in
            while true {
                let i = next.take()
                if i >= fillCount { return }
                try await appender.append(key: keys[i % keys.count]).durable()
            }
        }

        // Let the fill's write-back finish, so that it does not land in the phase before.
        let dir = c.directory
        try await onOwnThread { () throws(CatenaError) in ScratchSpace.settle(dir) }

        // The steady load, until stopped.
        let load = Load()
        let clock = ContinuousClock()
        let origin = clock.now
        let workers = Task { () async throws(CatenaError) -> [[(at: Int64, latency: Int64)]] in
            try await withLoad(load, store: store, appender: appender, keys: keys, origin: origin)
        }
        let sampler = Task { await sample(load, origin: origin) }

        func snapshot() -> (at: ContinuousClock.Instant, puts: Int, gets: Int) { (clock.now, load.puts, load.gets) }
        // A moment to get going (a second, or the phase if shorter), then the phase before.
        try? await Task.sleep(for: min(.seconds(1), c.phase))
        let opening = snapshot()
        c.progress?("before: \(c.phase)")
        try? await Task.sleep(for: c.phase)
        let start = snapshot()
        try await store.setCommitWatermark(store.highestLSN)
        let garbageBefore = store.garbage
        let logBefore = store.segments.reduce(UInt64(0)) { $0 + $1.byteSize }
        c.progress?(String(format: "during: compacting (%.0f MiB collectable of %.0f MiB sealed)",
                           Double(garbageBefore.collectableBytes) / 1_048_576, Double(garbageBefore.sealedBytes) / 1_048_576))
        let compactionResult = await Result.catching { () async throws(CatenaError) in try await store.compact() }
        let end = snapshot()
        let logAfter = store.segments.reduce(UInt64(0)) { $0 + $1.byteSize }
        c.progress?("after: \(c.phase)")
        try? await Task.sleep(for: c.phase)
        let finish = snapshot()
        load.stop()
        let perWorker: [[(at: Int64, latency: Int64)]]
        do {
            perWorker = try await workers.value
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "benchmark writer failed: \(error)")
        }
        let timeline = await sampler.value
        let compaction = try compactionResult.get()

        let beforeStart = (opening.at - origin).nanosecondsValue, base = (start.at - origin).nanosecondsValue
        let mid = (end.at - origin).nanosecondsValue, last = (finish.at - origin).nanosecondsValue
        var latencies: [[Int64]] = [[], [], []]
        for w in perWorker {
            for s in w {
                if s.at > beforeStart && s.at <= base { latencies[0].append(s.latency) }
                else if s.at > base && s.at <= mid { latencies[1].append(s.latency) }
                else if s.at > mid && s.at <= last { latencies[2].append(s.latency) }
            }
        }
        let before = Phase(elapsed: start.at - opening.at, puts: start.puts - opening.puts, gets: start.gets - opening.gets,
                           putLatency: LatencySummary(nanoseconds: latencies[0]))
        let during = Phase(elapsed: end.at - start.at, puts: end.puts - start.puts, gets: end.gets - start.gets,
                           putLatency: LatencySummary(nanoseconds: latencies[1]))
        let after = Phase(elapsed: finish.at - end.at, puts: finish.puts - end.puts, gets: finish.gets - end.gets,
                          putLatency: LatencySummary(nanoseconds: latencies[2]))
        var slowest: Double?
        var intervals: [Double] = []
        for (a, b) in zip(timeline, timeline.dropFirst()) where a.at >= base && b.at <= mid && b.at > a.at {
            let rate = Double(b.puts - a.puts) / (Double(b.at - a.at) / 1e9)
            slowest = min(slowest ?? rate, rate)
            intervals.append(rate)
        }
        return Report(
            valueSize: c.valueSize, keySpace: c.keySpace, fillBytes: c.fillBytes, writers: c.writers, readers: c.readers,
            segmentSize: c.segmentSize, requestWindow: c.requestWindow, before: before, during: during, after: after,
            slowestIntervalDuring: slowest, intervalsDuring: intervals, compaction: compaction, garbageBefore: garbageBefore,
            logBytesBefore: logBefore, logBytesAfter: logAfter)
    }

    /// Runs the load's writers and readers until `load` is stopped; returns each writer's
    /// (completion time since `origin`, latency) samples in ns.
    private func withLoad(_ load: Load, store: Store, appender: Appender, keys: [Key],
                          origin: ContinuousClock.Instant) async throws(CatenaError) -> [[(at: Int64, latency: Int64)]] {
        let c = configuration
        do {
            return try await withThrowingTaskGroup(of: [(at: Int64, latency: Int64)].self) { group in
                for w in 0..<c.writers {
                    group.addTask {
                        var rng = SplitMix64(seed: UInt64(w) &+ 1000)
                        var mine: [(at: Int64, latency: Int64)] = []
                        let clock = ContinuousClock()
                        while !load.stopped {
                            let began = clock.now
                            try await appender.append(key: keys[Int.random(in: 0..<keys.count, using: &rng)]).durable()
                            let done = clock.now
                            mine.append(((done - origin).nanosecondsValue, (done - began).nanosecondsValue))
                            load.didPut()
                        }
                        return mine
                    }
                }
                for r in 0..<c.readers {
                    group.addTask {
                        var rng = SplitMix64(seed: UInt64(r) &+ 2000)
                        while !load.stopped {
                            if let object = try store.get(keys[Int.random(in: 0..<keys.count, using: &rng)]) {
                                _ = try await object.bytes()
                            }
                            load.didGet()
                        }
                        return []
                    }
                }
                var out: [[(at: Int64, latency: Int64)]] = []
                for try await part in group where !part.isEmpty { out.append(part) }
                return out
            }
        } catch let error as CatenaError {
            load.stop()
            throw error
        } catch {
            load.stop()
            throw CatenaError(.ioFailure, "benchmark load failed: \(error)")
        }
    }

    /// Counts every 250 ms until the load stops: (time since `origin` in ns, puts, gets).
    private func sample(_ load: Load, origin: ContinuousClock.Instant) async -> [(at: Int64, puts: Int, gets: Int)] {
        var out: [(at: Int64, puts: Int, gets: Int)] = []
        let clock = ContinuousClock()
        while !load.stopped {
            out.append(((clock.now - origin).nanosecondsValue, load.puts, load.gets))
            try? await Task.sleep(for: .milliseconds(250))
        }
        return out
    }

    /// Runs `count` copies of `body` concurrently and rethrows the first failure.
    private func runTasks(_ count: Int, _ body: @escaping @Sendable () async throws(CatenaError) -> Void) async throws(CatenaError) {
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<count { group.addTask { try await body() } }
                try await group.waitForAll()
            }
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "benchmark task failed: \(error)")
        }
    }
}

/// The steady load's shared counters and stop flag.
private final class Load: Sendable {
    private let putCount = Atomic<Int>(0)
    private let getCount = Atomic<Int>(0)
    private let stopFlag = Atomic<Bool>(false)
    var puts: Int { putCount.load(ordering: .relaxed) }
    var gets: Int { getCount.load(ordering: .relaxed) }
    var stopped: Bool { stopFlag.load(ordering: .relaxed) }
    func didPut() { putCount.add(1, ordering: .relaxed) }
    func didGet() { getCount.add(1, ordering: .relaxed) }
    func stop() { stopFlag.store(true, ordering: .relaxed) }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
