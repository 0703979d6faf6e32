import CatenaClient
import CatenaCore
import Histogram
import Synchronization

/// `catena bench`: a load generator for a running cluster, through the client library.
///
/// `concurrency` workers each run one operation at a time. Closed loop (the default): a worker
/// starts its next operation when the last one returns, and latency runs from the call to its
/// return. Open loop (`rate`): operation `i` is due at `i / rate` seconds after the start,
/// whichever worker takes it, and its latency runs from when it was due — a stall delays
/// every operation due meanwhile and all of them count it, not only the one that met it (no
/// coordinated omission, as wrk2 and HdrHistogram's authors measure).
///
/// Latencies go into one HdrHistogram per operation (1 µs to 1 hour, 3 significant digits).
/// With `verify`, every value is stamped (``LoadStamp``) and every read is checked by a
/// ``LoadVerifier``; at the end every key written is read once more.
public final class LoadGenerator: Sendable {
    /// What to run and for how long.
    public struct Configuration: Sendable {
        /// When the measured run ends.
        public enum Limit: Sendable, Hashable {
            /// After this long.
            case duration(Duration)
            /// After this many operations.
            case operations(Int)
        }

        /// Operations, keys and values.
        public var workload: LoadWorkload
        /// Operations in flight at once (workers).
        public var concurrency = 16
        /// When to stop.
        public var limit = Limit.duration(.seconds(10))
        /// Operations per second for an open loop; nil: closed loop.
        public var rate: Double?
        /// Stamp values, check every read, read every written key again at the end.
        public var verify = false
        /// Write every key once before measuring, so reads find values.
        public var prefill = true
        /// How often `progress` is called.
        public var progressInterval: Duration = .seconds(1)
        /// A phase is given up once its operations have all failed for this long (the cluster
        /// is down or unreachable): without it, a prefill or final verification of many keys
        /// against a dead cluster would take keys × the request timeout.
        public var giveUpAfter: Duration = .seconds(30)

        public init(workload: LoadWorkload) {
            self.workload = workload
        }
    }

    /// One progress report: the last interval's rates and the errors so far.
    public struct Progress: Sendable {
        /// The phase: `prefill`, `run` or `verify`.
        public var phase: String
        /// Since the phase began.
        public var elapsed: Duration
        /// Operations completed per second in the interval.
        public var operationsPerSecond: Double
        /// Value bytes moved per second in the interval (puts and gets), in MB (10^6).
        public var megabytesPerSecond: Double
        /// Failed operations in the phase so far.
        public var errors: Int
        /// Operations completed in the phase so far.
        public var operations: Int
    }

    let clients: [CatenaClient]
    let configuration: Configuration
    let verifier: LoadVerifier?
    let run: UInt64
    /// Calls of ``stop()``: the load stops at the first, the final verification at the second.
    private let stops = Atomic<Int>(0)
    private let origin = ContinuousClock.now

    /// A generator over `clients` (workers take them in turn); `run` identifies this run's
    /// stamps.
    public init(clients: [CatenaClient], configuration: Configuration, run: UInt64) {
        precondition(!clients.isEmpty && configuration.concurrency > 0 && configuration.workload.keys > 0)
        self.clients = clients
        self.configuration = configuration
        self.run = run
        verifier = configuration.verify ? LoadVerifier(run: run) : nil
    }

    /// Stops the run early (Ctrl-C): no new operation starts; those in flight finish; the
    /// report covers what was measured.
    /// A second call also stops the final verification.
    public func stop() {
        stops.add(1, ordering: .relaxed)
    }

    /// Whether ``stop()`` was called.
    public var isStopped: Bool { stops.load(ordering: .relaxed) > 0 }

    /// Prefills (if asked), runs the load, verifies (if asked), and reports.
    public func run(progress: @escaping @Sendable (Progress) -> Void = { _ in }) async -> LoadReport {
        var prefill: LoadReport.Phase?
        if configuration.prefill && !isStopped {
            prefill = await phase("prefill", tickets: .operations(configuration.workload.keys), rate: nil, progress: progress) { worker, ticket, _ in
                await worker.put(key: ticket)
            }
        }
        var measured = LoadReport.Phase(name: "run", seconds: 0, operations: [:])
        if let abandoned = prefill?.abandoned {
            measured.abandoned = "not run: the prefill was given up (\(abandoned))"
        } else if !isStopped {
            measured = await phase("run", tickets: configuration.limit, rate: configuration.rate, progress: progress) { worker, _, random in
                await worker.perform(self.configuration.workload.mix.pick(random.next()), &random)
            }
        }
        let cutShort = isStopped
        var sweep: LoadReport.Phase?
        var written = 0
        if let verifier {
            // After a Ctrl-C too (another one stops it): what was acknowledged must be there.
            let keys = verifier.writtenKeys
            written = keys.count
            sweep = await phase("verify", tickets: .operations(keys.count), rate: nil, stopsAfter: 2, progress: progress) { worker, ticket, _ in
                await worker.get(key: keys[ticket])
            }
        }
        return LoadReport(configuration: configuration, readMode: clients.first?.readMode ?? .linearizable, ack: clients.first?.ack ?? .all, run: run, prefill: prefill, measured: measured, sweep: sweep, keysWritten: written,
                          sweepSkipped: stops.load(ordering: .relaxed) >= 2, verifier: verifier, interrupted: cutShort)
    }

    /// Runs `body` for each ticket over the workers until `tickets` run out or ``stop()``.
    private func phase(
        _ name: String, tickets: Configuration.Limit, rate: Double?, stopsAfter: Int = 1, progress: @escaping @Sendable (Progress) -> Void,
        _ body: @escaping @Sendable (Worker, Int, inout SplitMix64) async -> Void
    ) async -> LoadReport.Phase {
        let recorder = Recorder()
        let start = ContinuousClock.now
        let deadline: ContinuousClock.Instant? = if case .duration(let d) = tickets { start + d } else { nil }
        let count: Int? = if case .operations(let n) = tickets { n } else { nil }
        let interval = rate.map { Duration.nanoseconds(Int64(1e9 / $0)) }
        let workers = count.map { min($0, configuration.concurrency) } ?? configuration.concurrency
        let elapsed = await withTaskGroup(of: Void.self) { group in
            for w in 0..<workers {
                let worker = Worker(generator: self, client: clients[w % clients.count], index: w, recorder: recorder, run: run)
                group.addTask {
                    var random = SplitMix64(seed: self.configuration.workload.seed &+ UInt64(w) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(name.utf8.count))
                    while self.stops.load(ordering: .relaxed) < stopsAfter {
                        if recorder.failingFor(longerThan: self.configuration.giveUpAfter) { break }
                        let ticket = recorder.tickets.add(1, ordering: .relaxed).oldValue
                        if let count, ticket >= count { break }
                        var due: ContinuousClock.Instant?
                        if let interval {
                            let at = start + interval * ticket
                            if let deadline, at >= deadline { break }
                            guard await self.sleep(until: at, stopsAfter: stopsAfter) else { break }
                            due = at
                        } else if let deadline, ContinuousClock.now >= deadline {
                            break
                        }
                        worker.due = due
                        await body(worker, ticket, &random)
                    }
                }
            }
            // The progress reporter: ends with the workers.
            let reporter = Task {
                var last = recorder.totals
                var lastTime = ContinuousClock.now
                while !Task.isCancelled {
                    try? await Task.sleep(for: configuration.progressInterval)
                    if Task.isCancelled { break }
                    let now = ContinuousClock.now, totals = recorder.totals
                    let seconds = max(1e-9, (now - lastTime).secondsValue)
                    progress(Progress(phase: name, elapsed: now - start,
                                      operationsPerSecond: Double(totals.operations - last.operations) / seconds,
                                      megabytesPerSecond: Double(totals.bytes - last.bytes) / seconds / 1e6,
                                      errors: totals.errors, operations: totals.operations))
                    (last, lastTime) = (totals, now)
                }
            }
            await group.waitForAll()
            reporter.cancel()
            return ContinuousClock.now - start
        }
        var phase = recorder.phase(name, seconds: elapsed.secondsValue)
        if recorder.failingFor(longerThan: configuration.giveUpAfter) {
            phase.abandoned = "every operation failed for \(Int(configuration.giveUpAfter.secondsValue)) s: the cluster did not answer"
        }
        return phase
    }

    /// Sleeps until `instant` in short steps; false if stopped meanwhile.
    private func sleep(until instant: ContinuousClock.Instant, stopsAfter: Int) async -> Bool {
        while stops.load(ordering: .relaxed) < stopsAfter {
            let left = instant - ContinuousClock.now
            if left <= .zero { return true }
            try? await Task.sleep(for: min(left, .milliseconds(100)))
        }
        return false
    }

    /// Nanoseconds since the generator was made: the verifier's clock.
    var now: Int64 { (ContinuousClock.now - origin).nanosecondsClamped }

    /// The key most recently taken by a write (`latest`), and the source of the next one.
    let writeCursor = Atomic<Int>(0)

    /// Per writer (worker index), the last sequence number its stamps used: workers are made
    /// anew for each phase, and a stamp must never repeat within a run (the prefill's writes
    /// and the run's would otherwise share stamps, and the verifier would take one for the other).
    let sequences = Mutex<[Int: UInt64]>([:])

    /// The next sequence number of writer `index`.
    func nextSequence(of index: Int) -> UInt64 {
        sequences.withLock { s in
            let next = (s[index] ?? 0) + 1
            s[index] = next
            return next
        }
    }
}

/// One worker: a client, a stamp writer id, and the operations.
final class Worker: @unchecked Sendable {
    // @unchecked: `due` is touched only by the one task that runs this worker.
    let generator: LoadGenerator
    let client: CatenaClient
    let index: Int
    let recorder: Recorder
    let run: UInt64
    let keys: KeyChooser
    var due: ContinuousClock.Instant?

    init(generator: LoadGenerator, client: CatenaClient, index: Int, recorder: Recorder, run: UInt64) {
        self.generator = generator
        self.client = client
        self.index = index
        self.recorder = recorder
        self.run = run
        keys = KeyChooser(keys: generator.configuration.workload.keys, distribution: generator.configuration.workload.keyDistribution)
    }

    private var workload: LoadWorkload { generator.configuration.workload }
    private var verifier: LoadVerifier? { generator.verifier }

    func perform(_ operation: LoadWorkload.Operation, _ random: inout SplitMix64) async {
        let newest = generator.writeCursor.load(ordering: .relaxed) - 1
        switch operation {
        case .put:
            let key = keys.write(&random) { generator.writeCursor.add(1, ordering: .relaxed).oldValue }
            await put(key: key, size: workload.sizes.pick(random.next()))
        case .get: await get(key: keys.read(&random, newest: newest))
        case .delete: await delete(key: keys.read(&random, newest: newest))
        case .head: await head(key: keys.read(&random, newest: newest))
        case .list: await list(from: keys.read(&random, newest: newest))
        }
    }

    /// A put of a new stamped value (random size unless `size`).
    func put(key: Int, size: Int? = nil) async {
        let size = size ?? workload.sizes.pick(UInt64(truncatingIfNeeded: key) &* 0x9E37_79B9_7F4A_7C15)
        let name = workload.key(key)
        let sequence = generator.nextSequence(of: index)
        let stamp = LoadStamp(run: run, writer: UInt32(index), sequence: sequence, keyHash: XXH3.hash(Array(name.utf8)))
        let value = size >= LoadStamp.size ? stamp.value(size: size) : [UInt8](repeating: UInt8(truncatingIfNeeded: sequence), count: size)
        verifier?.invoke(key: key, stamp: stamp, isDelete: false, checksum: XXH3.hash(value), at: generator.now)
        let start = ContinuousClock.now
        do throws(CatenaError) {
            let receipt = try await client.put(name, value)
            recorder.record(.put, since: due ?? start, bytes: size)
            verifier?.acknowledge(key: key, name: name, stamp: stamp, lsn: receipt.lsn, at: generator.now)
        } catch {
            recorder.fail(.put, error, since: due ?? start)
            verifier?.fail(key: key, stamp: stamp)
        }
    }

    func get(key: Int) async {
        let name = workload.key(key)
        let (start, begun) = (ContinuousClock.now, generator.now)
        do throws(CatenaError) {
            let object = try await client.get(name)
            recorder.record(.get, since: due ?? start, bytes: object.bytes.count)
            verifier?.check(key: key, name: name, observed: .value(lsn: object.info.lsn, checksum: object.info.contentChecksum, bytes: object.bytes),
                            start: begun, end: generator.now)
        } catch {
            guard error.code == .notFound else { return recorder.fail(.get, error, since: due ?? start) }
            recorder.record(.get, since: due ?? start, bytes: 0, found: false)
            verifier?.check(key: key, name: name, observed: .absent, start: begun, end: generator.now)
        }
    }

    func head(key: Int) async {
        let name = workload.key(key)
        let (start, begun) = (ContinuousClock.now, generator.now)
        do throws(CatenaError) {
            let info = try await client.head(name)
            recorder.record(.head, since: due ?? start, bytes: 0)
            verifier?.check(key: key, name: name, observed: .info(lsn: info.lsn, checksum: info.contentChecksum), start: begun, end: generator.now)
        } catch {
            guard error.code == .notFound else { return recorder.fail(.head, error, since: due ?? start) }
            recorder.record(.head, since: due ?? start, bytes: 0, found: false)
            verifier?.check(key: key, name: name, observed: .absent, start: begun, end: generator.now)
        }
    }

    func delete(key: Int) async {
        let name = workload.key(key)
        let stamp = LoadStamp(run: run, writer: UInt32(index), sequence: generator.nextSequence(of: index), keyHash: 0)
        verifier?.invoke(key: key, stamp: stamp, isDelete: true, checksum: 0, at: generator.now)
        let start = ContinuousClock.now
        do throws(CatenaError) {
            let lsn = try await client.delete(name)
            recorder.record(.delete, since: due ?? start, bytes: 0)
            verifier?.acknowledge(key: key, name: name, stamp: stamp, lsn: lsn, at: generator.now)
        } catch {
            recorder.fail(.delete, error, since: due ?? start)
            verifier?.fail(key: key, stamp: stamp)
        }
    }

    /// Lists up to `listLimit` keys after key `from`; with a verifier, checks every key of
    /// the range the page covers, listed or not.
    func list(from key: Int) async {
        let (start, begun) = (ContinuousClock.now, generator.now)
        do throws(CatenaError) {
            let page = try await client.list(prefix: workload.prefix, after: try Key(workload.key(key)), limit: workload.listLimit)
            recorder.record(.list, since: due ?? start, bytes: 0)
            guard let verifier else { return }
            let end = generator.now
            var listed: [Int: ObjectInfo] = [:]
            for info in page.objects {
                if let i = workload.index(ofKey: info.key.description) { listed[i] = info }
            }
            // The page covers the keys after `key` up to its last (all the rest if it is the last page).
            let last = page.nextCursor == nil ? workload.keys - 1 : (listed.keys.max() ?? key)
            guard last > key else { return }
            for i in (key + 1)...last {
                let observed: LoadVerifier.Observation = listed[i].map { .info(lsn: $0.lsn, checksum: $0.contentChecksum) } ?? .absent
                verifier.check(key: i, name: workload.key(i), observed: observed, start: begun, end: end)
            }
        } catch {
            recorder.fail(.list, error, since: due ?? start)
        }
    }
}

/// Latencies, counts and errors per operation, shared by a phase's workers.
final class Recorder: Sendable {
    struct Totals: Sendable {
        var operations = 0
        var bytes = 0
        var errors = 0
    }

    struct Stats: Sendable {
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        var succeeded = 0
        var notFound = 0
        var bytes = 0
        var errors: [String: Int] = [:]
    }

    /// The phase's next ticket (operation number).
    let tickets = Atomic<Int>(0)
    private let stats = Mutex<[LoadWorkload.Operation: Stats]>([:])
    private let operations = Atomic<Int>(0)
    private let bytes = Atomic<Int>(0)
    private let errors = Atomic<Int>(0)
    private let started = ContinuousClock.now
    /// Nanoseconds from `started` to the last success (0: none yet), and to the first failure
    /// after it (-1: none).
    private let lastSuccess = Atomic<Int64>(0)
    private let failingSince = Atomic<Int64>(-1)

    /// Whether every operation since the last success (or the start) failed, the first of them
    /// longer than `limit` ago.
    func failingFor(longerThan limit: Duration) -> Bool {
        let since = failingSince.load(ordering: .relaxed)
        return since >= 0 && (ContinuousClock.now - started).nanosecondsClamped - since > limit.nanosecondsClamped
    }

    var totals: Totals {
        Totals(operations: operations.load(ordering: .relaxed), bytes: bytes.load(ordering: .relaxed), errors: errors.load(ordering: .relaxed))
    }

    func record(_ operation: LoadWorkload.Operation, since start: ContinuousClock.Instant, bytes count: Int, found: Bool = true) {
        let micros = Self.micros(since: start)
        stats.withLock { all in
            all[operation, default: Stats()].histogram.record(micros)
            all[operation]!.succeeded += 1
            if !found { all[operation]!.notFound += 1 }
            all[operation]!.bytes += count
        }
        operations.add(1, ordering: .relaxed)
        bytes.add(count, ordering: .relaxed)
        lastSuccess.store((ContinuousClock.now - started).nanosecondsClamped, ordering: .relaxed)
        failingSince.store(-1, ordering: .relaxed)
    }

    func fail(_ operation: LoadWorkload.Operation, _ error: CatenaError, since start: ContinuousClock.Instant) {
        let micros = Self.micros(since: start)
        stats.withLock { all in
            // A failed operation's time counts too: a timeout is a latency the user saw.
            all[operation, default: Stats()].histogram.record(micros)
            all[operation]!.errors[error.code.description, default: 0] += 1
        }
        operations.add(1, ordering: .relaxed)
        errors.add(1, ordering: .relaxed)
        // The first failure after a success starts the clock (from the start of the failed call).
        let began = (start - started).nanosecondsClamped
        _ = failingSince.compareExchange(expected: -1, desired: max(began, lastSuccess.load(ordering: .relaxed)), ordering: .relaxed)
    }

    private static func micros(since start: ContinuousClock.Instant) -> UInt64 {
        UInt64(clamping: min(3_600_000_000, max(1, (ContinuousClock.now - start).nanosecondsClamped / 1000)))
    }

    func phase(_ name: String, seconds: Double) -> LoadReport.Phase {
        let all = stats.withLock { $0 }
        return LoadReport.Phase(name: name, seconds: seconds, operations: all.mapValues { LoadReport.OperationReport($0, seconds: seconds) },
                                histograms: all.mapValues(\.histogram))
    }
}
