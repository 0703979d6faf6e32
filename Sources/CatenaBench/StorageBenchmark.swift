import CatenaCore
import CatenaStorage
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The load generator behind `catena bench-storage`: append throughput and latency of one
/// ``Store`` under many concurrent single-record appenders, next to the raw speed of the same
/// disk measured in the same run.
///
/// For each value size it runs ``Configuration/repetitions`` rounds. A round measures the store
/// and the raw disk back to back: it opens a fresh store in a fresh subdirectory of
/// ``Configuration/directory``, runs ``Configuration/concurrency`` appender tasks (one `put`
/// record per append call, keys `bench/<size>/<i % keySpace>`) until the size's record count is
/// durable, closes and removes the store; and it writes the same number of bytes to a new plain
/// file (``RawDiskBenchmark``) twice: fsync only at the end, and fsync every 16 MiB. Odd rounds
/// run the store first, even rounds the raw disk first, so neither side always inherits the
/// other's write-back and discards. Every timed phase is preceded by ``ScratchSpace/settle(_:)``.
///
/// Appenders assign LSNs the way a chain head does: the next seq is taken and the record
/// enqueued atomically, so the store sees a contiguous log (see ``Encoding``).
public struct StorageBenchmark: Sendable {
    /// Where an appender encodes its record (copy of the value and the record checksum).
    public enum Encoding: String, Sendable, CaseIterable {
        /// Take the seq, build and encode the record, enqueue: all under one lock. Simple; the
        /// encoding of every record is serialized.
        case underLock = "under-lock"
        /// Take the seq under a lock, encode outside it, then enqueue in seq order through a
        /// reorder buffer (whichever appender completes the contiguous prefix enqueues it).
        case outsideLock = "outside-lock"
    }

    /// What to run. Every field has a default except the directory.
    public struct Configuration: Sendable {
        /// A directory on the disk to measure; the benchmark creates and removes its own
        /// subdirectories and files in it, and leaves the directory itself.
        public var directory: String
        /// Value sizes in bytes, measured in this order. Default 4 KiB and 1 MiB.
        public var valueSizes: [Int] = [4 << 10, 1 << 20]
        /// Rounds per value size, each measuring the store and the raw disk. Default 3.
        public var repetitions: Int = 3
        /// Concurrent appender tasks. Default 64.
        public var concurrency: Int = 64
        /// At most this many records per value size (per round). Default 100,000.
        public var maxRecordsPerSize: Int = 100_000
        /// At most this many value bytes per value size (per round). Default 2 GiB.
        public var maxBytesPerSize: Int = 2 << 30
        /// The store's durability. Default ``Durability/batch``.
        public var durability: Durability = .batch
        /// Where records are encoded. Default ``Encoding/outsideLock``: encoding under the LSN
        /// lock serializes the value copy and checksum of every record and measurably limits
        /// 1 MiB throughput on a 2-core machine (docs/PERFORMANCE.md).
        public var encoding: Encoding = .outsideLock
        /// Overrides ``StoreConfiguration/groupCommitMaxBytes``; nil keeps the store's default.
        public var groupCommitMaxBytes: Int?
        /// Overrides ``StoreConfiguration/groupCommitDelay``; nil keeps the store's default.
        public var groupCommitDelay: Duration?
        /// Distinct keys per value size. Default 100,000.
        public var keySpace: Int = 100_000
        /// Whether to measure the raw disk after each store run. Default true.
        public var measureRawDisk: Bool = true
        /// The fsync interval of the second raw-disk run. Default 16 MiB (the store's default
        /// group-commit size).
        public var rawSyncInterval: Int = 16 << 20
        /// Called after each round with a one-line summary of it (for progress output); nil: quiet.
        public var progress: (@Sendable (String) -> Void)?
        /// The logger handed to the store (its info messages are noise here). Default: warnings.
        public var logger: Logger = .benchmark(level: .warning)

        /// A configuration with the defaults above.
        public init(directory: String) {
            self.directory = directory
        }

        /// The records written for `valueSize`: `min(maxRecordsPerSize, maxBytesPerSize / valueSize)`, at least 1.
        public func recordCount(forValueSize valueSize: Int) -> Int {
            max(1, min(maxRecordsPerSize, maxBytesPerSize / max(1, valueSize)))
        }

        /// The allowed ``repetitions``.
        public static let repetitionRange = 1...20

        /// The bytes the store appends for `valueSize`: every record's header, key, value and
        /// checksum. The raw-disk phases write this many bytes, so they can run before the store.
        public func recordBytes(forValueSize valueSize: Int) -> Int {
            let count = recordCount(forValueSize: valueSize)
            let prefix = "bench/\(valueSize)/".utf8.count
            var keyBytes = 0
            // Keys are `prefix + String(i % keySpace)`: count the digits of each.
            for i in 0..<count { keyBytes += prefix + decimalDigits(i % keySpace) }
            return count * (RecordHeader.overhead + valueSize) + keyBytes
        }

        /// A description of the first problem with this configuration, or nil.
        public var problem: String? {
            if valueSizes.isEmpty { return "at least one value size is needed" }
            if let bad = valueSizes.first(where: { $0 < 1 || $0 > 16 << 20 }) {
                return "value size \(bad) is outside 1 byte ... 16 MiB (the store's record limit)"
            }
            if Set(valueSizes).count != valueSizes.count { return "value sizes repeat" }
            if !Configuration.repetitionRange.contains(repetitions) {
                return "repetitions must be \(Configuration.repetitionRange.lowerBound) ... \(Configuration.repetitionRange.upperBound), not \(repetitions)"
            }
            if concurrency < 1 || concurrency > 100_000 { return "concurrency must be 1 ... 100000, not \(concurrency)" }
            if maxRecordsPerSize < 1 { return "record count must be at least 1" }
            if maxBytesPerSize < 1 { return "volume must be at least 1 byte" }
            if let g = groupCommitMaxBytes, g < 1 { return "group commit size must be at least 1 byte" }
            if let d = groupCommitDelay, d < .zero { return "group commit delay cannot be negative" }
            if keySpace < 1 { return "key space must be at least 1" }
            if rawSyncInterval < 1 { return "raw sync interval must be at least 1 byte" }
            return nil
        }
    }

    /// What to run.
    public var configuration: Configuration

    /// Creates a benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Runs every value size in turn, ``Configuration/repetitions`` rounds each, and reports.
    /// Removes what it wrote, also on failure.
    public func run() async throws(CatenaError) -> Report {
        let c = configuration
        if let problem = c.problem { throw CatenaError(.invalidArgument, problem) }
        let clock = ContinuousClock()
        let start = clock.now
        var results: [SizeResult] = []
        for size in c.valueSizes {
            var rounds: [RoundResult] = []
            var samples: [Int64] = []
            samples.reserveCapacity(c.recordCount(forValueSize: size) * c.repetitions)
            for round in 1...c.repetitions {
                let (result, latencies) = try await run(valueSize: size, round: round)
                rounds.append(result)
                samples.append(contentsOf: latencies)
                c.progress?(result.progressLine(of: c.repetitions))
            }
            results.append(SizeResult(valueSize: size, rounds: rounds, pooledLatency: LatencySummary(nanoseconds: samples)))
        }
        let defaults = StoreConfiguration(directory: c.directory, clusterID: "bench", nodeID: "bench")
        return Report(
            durability: c.durability, concurrency: c.concurrency, encoding: c.encoding,
            groupCommitMaxBytes: c.groupCommitMaxBytes ?? defaults.groupCommitMaxBytes,
            groupCommitDelay: c.groupCommitDelay ?? defaults.groupCommitDelay,
            rawSyncInterval: c.rawSyncInterval, repetitions: c.repetitions,
            elapsed: clock.now - start, results: results)
    }

    /// Runs one round of one value size: the store and the raw disk (end fsync, then periodic
    /// fsyncs) back to back; odd rounds run the store first, even rounds the raw disk. Returns
    /// the round and its latency samples.
    func run(valueSize: Int, round: Int) async throws(CatenaError) -> (RoundResult, [Int64]) {
        let c = configuration
        let storeFirst = round % 2 == 1
        let clock = ContinuousClock()
        let start = clock.now
        var settling = Duration.zero
        var store: StorePhase?
        var rawEnd: RawDiskBenchmark.Result?
        var rawPeriodic: RawDiskBenchmark.Result?
        if storeFirst {
            store = try await measureStore(valueSize: valueSize, round: round, settling: &settling)
        }
        if c.measureRawDisk {
            let dir = c.directory
            let bytes = c.recordBytes(forValueSize: valueSize)
            let interval = c.rawSyncInterval
            for periodic in [false, true] {
                let (result, settled) = try await onOwnThread { () throws(CatenaError) in
                    let settled = ContinuousClock().measure { ScratchSpace.settle(dir) }
                    let run = RawDiskBenchmark(directory: dir, totalBytes: bytes, syncEvery: periodic ? interval : nil)
                    return (try run.run(), settled)
                }
                settling += settled
                if periodic { rawPeriodic = result } else { rawEnd = result }
            }
        }
        if !storeFirst {
            store = try await measureStore(valueSize: valueSize, round: round, settling: &settling)
        }
        let measured = store!
        let result = RoundResult(
            round: round, storeFirst: storeFirst, valueSize: valueSize,
            records: c.recordCount(forValueSize: valueSize), elapsed: measured.elapsed,
            latency: LatencySummary(nanoseconds: measured.latencies), metrics: measured.metrics,
            rawEndSync: rawEnd, rawPeriodicSync: rawPeriodic,
            wallTime: clock.now - start, settleTime: settling)
        return (result, measured.latencies)
    }

    /// What the store phase of a round measured.
    struct StorePhase {
        var elapsed: Duration
        var latencies: [Int64]
        var metrics: StoreMetrics
    }

    /// Settles, opens a fresh store in a fresh subdirectory, appends the size's records, closes
    /// and removes the store.
    private func measureStore(valueSize: Int, round: Int, settling: inout Duration) async throws(CatenaError) -> StorePhase {
        let c = configuration
        let count = c.recordCount(forValueSize: valueSize)
        let storeDir = c.directory + "/store-\(valueSize)-\(round)"
        try ScratchSpace.removeTree(storeDir)
        var sc = StoreConfiguration(directory: storeDir, clusterID: "bench", nodeID: "bench-\(valueSize)")
        sc.durability = c.durability
        if let g = c.groupCommitMaxBytes { sc.groupCommitMaxBytes = g }
        if let d = c.groupCommitDelay { sc.groupCommitDelay = d }

        var value = [UInt8](repeating: 0, count: valueSize)
        var rng = SplitMix64(seed: UInt64(valueSize) &+ UInt64(round))
        rng.fill(&value)

        let dir = c.directory
        settling += try await onOwnThread { () throws(CatenaError) in
            ContinuousClock().measure { ScratchSpace.settle(dir) }
        }
        let store = try await Store.open(sc, logger: c.logger)
        let measured: StorePhase
        do {
            measured = try await appendAll(store: store, value: value, count: count)
        } catch {
            await store.close()
            try? ScratchSpace.removeTree(storeDir)
            throw error
        }
        await store.close()
        try ScratchSpace.removeTree(storeDir)
        return measured
    }

    /// Runs the appender tasks until `count` records are durable.
    private func appendAll(store: Store, value: [UInt8], count: Int) async throws(CatenaError) -> StorePhase {
        let c = configuration
        let appender = Appender(store: store, value: value, encoding: c.encoding)
        let next = Counter()
        let prefix = "bench/\(value.count)/"
        let keySpace = c.keySpace
        let workers = min(c.concurrency, count)
        let perWorker = count / workers + 1
        let clock = ContinuousClock()
        let start = clock.now
        var latencies: [Int64] = []
        latencies.reserveCapacity(count)
        do {
            try await withThrowingTaskGroup(of: [Int64].self) { group in
                for _ in 0..<workers {
                    group.addTask {
                        var mine: [Int64] = []
                        mine.reserveCapacity(perWorker)
                        while true {
                            let i = next.take()
                            if i >= count { break }
                            let key = try Key(prefix + String(i % keySpace))
                            let began = clock.now
                            let ticket = try await appender.append(key: key)
                            try await ticket.durable()
                            mine.append((clock.now - began).nanosecondsValue)
                        }
                        return mine
                    }
                }
                for try await part in group { latencies.append(contentsOf: part) }
            }
        } catch let error as CatenaError {
            throw error
        } catch {
            throw CatenaError(.ioFailure, "benchmark appender failed: \(error)")
        }
        let elapsed = clock.now - start
        return StorePhase(elapsed: elapsed, latencies: latencies, metrics: store.metrics)
    }
}

/// Decimal digits of a non-negative `n`.
func decimalDigits(_ n: Int) -> Int {
    var digits = 1
    var rest = n / 10
    while rest > 0 {
        digits += 1
        rest /= 10
    }
    return digits
}

/// A shared index dispenser for the appender tasks.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    /// Returns the next index (0, 1, 2, ...).
    func take() -> Int { value.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// Assigns LSNs (epoch 1, contiguous seqs) and enqueues one `put` record per call, in seq order.
final class Appender: Sendable {
    let store: Store
    let value: [UInt8]
    /// The content checksum of `value`: computed once, as a client would before sending.
    let contentChecksum: UInt64
    let encoding: StorageBenchmark.Encoding
    /// The head timestamp each record gets (nil: 0). `catena bench-compaction` uses the wall
    /// clock, so the request-id window moves as it would on a node.
    let timestamp: (@Sendable () -> UInt64)?
    /// The last seq handed out.
    private let lastSeq = Mutex<UInt64>(0)
    private let reorder = Mutex<ReorderBuffer>(ReorderBuffer())

    typealias Waiter = CheckedContinuation<Result<AppendTicket, CatenaError>, Never>

    /// Encoded records waiting for their predecessors, by seq.
    struct ReorderBuffer {
        var nextToEnqueue: UInt64 = 1
        var ready: [UInt64: (record: Result<EncodedRecord, CatenaError>, waiter: Waiter)] = [:]
    }

    init(store: Store, value: [UInt8], encoding: StorageBenchmark.Encoding, timestamp: (@Sendable () -> UInt64)? = nil) {
        self.store = store
        self.value = value
        self.contentChecksum = XXH3.hash(value)
        self.encoding = encoding
        self.timestamp = timestamp
    }

    private func record(_ key: Key, seq: UInt64) throws(CatenaError) -> EncodedRecord {
        try Record(type: .put, key: key, lsn: LSN(epoch: 1, seq: seq), timestamp: timestamp?() ?? 0, contentChecksum: contentChecksum,
                   value: value).encoded()
    }

    /// Appends one record for `key`; returns its ticket once it is enqueued.
    func append(key: Key) async throws(CatenaError) -> AppendTicket {
        switch encoding {
        case .underLock:
            return try lastSeq.withLock { (seq) throws(CatenaError) -> AppendTicket in
                let encoded = try record(key, seq: seq + 1)
                let ticket = try store.enqueue([encoded])
                seq += 1
                return ticket
            }
        case .outsideLock:
            let seq = lastSeq.withLock { s in
                s += 1
                return s
            }
            let encoded = Result { () throws(CatenaError) in try record(key, seq: seq) }
            let outcome = await withCheckedContinuation { (waiter: Waiter) in
                let resume: [(Waiter, Result<AppendTicket, CatenaError>)] = reorder.withLock { b in
                    b.ready[seq] = (encoded, waiter)
                    var out: [(Waiter, Result<AppendTicket, CatenaError>)] = []
                    while let (r, w) = b.ready.removeValue(forKey: b.nextToEnqueue) {
                        out.append((w, r.flatMap { rec in Result { () throws(CatenaError) in try store.enqueue([rec]) } }))
                        b.nextToEnqueue += 1
                    }
                    return out
                }
                for (w, r) in resume { w.resume(returning: r) }
            }
            return try outcome.get()
        }
    }
}

/// A closure handed to a new thread.
private final class ThreadJob: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Runs blocking `body` on a new thread, off Swift's cooperative pool, and returns its result.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws(CatenaError) -> T) async throws(CatenaError) -> T {
    let result: Result<T, CatenaError> = await withCheckedContinuation { continuation in
        let job = ThreadJob { continuation.resume(returning: Result { () throws(CatenaError) in try body() }) }
        let context = Unmanaged.passRetained(job).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let job = Unmanaged<ThreadJob>.fromOpaque(raw!).takeRetainedValue()
            job.body()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<ThreadJob>.fromOpaque(context).release()
            continuation.resume(returning: .failure(CatenaError(.ioFailure, "pthread_create failed (errno \(rc))")))
        } else {
            pthread_detach(thread)
        }
    }
    return try result.get()
}
