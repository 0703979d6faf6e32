import CatenaClient
import CatenaCluster
import CatenaCore

#if canImport(Glibc)
import Glibc
#endif

/// The join benchmark behind `catena bench-join`: how fast a new node copies the chain's log
/// while clients keep writing, and what the copy costs them.
///
/// For each catch-up compression (``Compression``) it starts a fresh 3-node cluster of real
/// `catena` processes and fills it with ``Configuration/fillBytes`` of values of
/// ``Configuration/valueSize`` (``MixedValues``: half pseudo-random bytes, half repeated text).
/// Then ``Configuration/clients`` clients put values of the same kind one after another (new
/// keys) for the rest of the measurement; their throughput over ``Configuration/baseline`` is the
/// baseline. A 4th `catena node` process (`n4`, not in the topology, `--catch-up-compression`
/// as measured) is started, and once it listens, `ChainAdmin.addNode` adds it. From that call
/// until the master lists it as a member (the tail) the benchmark polls the master's status and
/// the size of the new node's data directory every 100 ms. Copy rate = bytes in the new node's
/// data directory when it became a member / time from the add to then; foreground ratio =
/// client throughput over the same interval / baseline. Goals: copy ≥ 300 MB/s, foreground
/// ≥ 50 % of the baseline.
public struct JoinBenchmark: Sendable {
    /// How the new node asks the tail for catch-up chunks (`catena node --catch-up-compression`).
    public enum Compression: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case lz4, none
        public var description: String { rawValue }
    }

    /// Settings.
    public struct Configuration: Sendable {
        /// The `catena` executable to start clusters with.
        public var executable: String
        /// Where clusters keep their data (a fresh subdirectory per compression, removed afterwards).
        public var directory: String
        /// Bytes of values written before the baseline.
        public var fillBytes: Int = 1 << 30
        /// Bytes per value.
        public var valueSize: Int = 64 << 10
        /// Concurrent clients (fill and foreground load), each putting one value at a time.
        public var clients: Int = 16
        /// How long the baseline throughput is measured.
        public var baseline: Duration = .seconds(5)
        /// How long the new node may take to become a member before the benchmark gives up.
        public var joinTimeout: Duration = .seconds(300)
        /// The compressions measured, each on a fresh cluster.
        public var compressions: [Compression] = [.lz4, .none]
        /// The new node's catch-up bound in MB/s (`catena node --catch-up-rate`; 0: none).
        public var catchUpRate: Int = 300
        /// The children's log level.
        public var logLevel: String = "warning"
        /// Progress lines.
        public var progress: @Sendable (String) -> Void = { _ in }

        /// Creates settings.
        public init(executable: String, directory: String) {
            self.executable = executable
            self.directory = directory
        }

        /// The accepted ranges: `invalidArgument` names the setting that is out of its range.
        public func validate() throws(CatenaError) {
            guard (1...(64 << 30)).contains(fillBytes) else {
                throw CatenaError(.invalidArgument, "the fill must be 1 B ... 64 GiB, not \(fillBytes) bytes")
            }
            guard (64...(1 << 20)).contains(valueSize) else {
                throw CatenaError(.invalidArgument, "the value size must be 64 B ... 1 MiB, not \(valueSize)")
            }
            guard (1...1024).contains(clients) else { throw CatenaError(.invalidArgument, "clients must be 1 ... 1024, not \(clients)") }
            guard baseline >= .milliseconds(100), baseline <= .seconds(600) else {
                throw CatenaError(.invalidArgument, "the baseline must be 0.1 ... 600 s, not \(fixed(baseline.seconds, 3)) s")
            }
            guard joinTimeout >= .seconds(1), joinTimeout <= .seconds(3600) else {
                throw CatenaError(.invalidArgument, "the join timeout must be 1 ... 3600 s, not \(fixed(joinTimeout.seconds, 3)) s")
            }
            guard !compressions.isEmpty, Set(compressions).count == compressions.count else {
                throw CatenaError(.invalidArgument, "name each compression (lz4, none) at most once, and at least one")
            }
        }
    }

    /// Client throughput over an interval.
    public struct Throughput: Hashable, Sendable {
        /// Puts acknowledged.
        public var puts: Int
        /// Value bytes per put.
        public var valueSize: Int
        /// The interval.
        public var elapsed: Duration
        /// Value megabytes (10^6 bytes) per second.
        public var megabytesPerSecond: Double { Double(puts * valueSize) / 1e6 / elapsed.seconds }
    }

    /// One compression's measurement.
    public struct CompressionResult: Hashable, Sendable {
        /// The new node's catch-up compression.
        public var compression: Compression
        /// Filling the chain before the baseline.
        public var fill: Throughput
        /// Foreground puts before the new node was added.
        public var baseline: Throughput
        /// Foreground puts from the add until the new node was a member (or the timeout).
        public var duringCopy: Throughput
        /// Whether the new node became a member within ``Configuration/joinTimeout``.
        public var joined: Bool
        /// From the add until the new node's data directory first grew (nil: it never did).
        public var firstByte: Duration?
        /// From the add until the master listed the new node as a member (or the timeout).
        public var timeToJoin: Duration
        /// Bytes in the new node's data directory then.
        public var copiedBytes: Int
        /// Bytes in the data directory of the node it copied from (the tail before it) then.
        public var tailBytes: Int
        /// The new node's highest seq then, as the master last heard it.
        public var copiedSeq: UInt64
        /// The highest seq of the node it copied from then, as the master last heard it.
        public var tailSeq: UInt64

        /// Megabytes (10^6 bytes) of log per second copied into the new node, from the add until it joined.
        public var copyMegabytesPerSecond: Double { Double(copiedBytes) / 1e6 / timeToJoin.seconds }
        /// Foreground throughput during the copy over the baseline.
        public var foregroundRatio: Double { duringCopy.megabytesPerSecond / baseline.megabytesPerSecond }
        /// The goals: copy at ≥ 300 MB/s, foreground at ≥ 50 % of the baseline.
        public var copyGoalMet: Bool { joined && copyMegabytesPerSecond >= JoinBenchmark.copyGoal }
        /// Whether the foreground goal was met.
        public var foregroundGoalMet: Bool { foregroundRatio >= JoinBenchmark.foregroundGoal }

        /// The copy-rate and foreground goals, judged (both measured whether or not the node joined).
        public var goals: [BenchmarkGoal] {
            let copy = fixed(copyMegabytesPerSecond, 1) + " MB/s"
            return [
                BenchmarkGoal(goal: "\(compression): copy >= \(fixed(JoinBenchmark.copyGoal, 0)) MB/s",
                              measured: joined ? copy : "n4 had not joined after \(fixed(timeToJoin.seconds, 0)) s (\(copy) until then)",
                              comparison: .atLeast, threshold: JoinBenchmark.copyGoal, unit: "MB/s", value: copyMegabytesPerSecond,
                              met: copyGoalMet),
                BenchmarkGoal(goal: "\(compression): foreground >= \(fixed(JoinBenchmark.foregroundGoal * 100, 0))% of the baseline",
                              measured: "\(fixed(foregroundRatio * 100, 0))% (\(fixed(duringCopy.megabytesPerSecond, 1)) of \(fixed(baseline.megabytesPerSecond, 1)) MB/s)",
                              comparison: .atLeast, threshold: JoinBenchmark.foregroundGoal, unit: "ratio", value: foregroundRatio,
                              met: foregroundGoalMet),
            ]
        }
    }

    /// The copy-rate goal, MB/s.
    public static let copyGoal = 300.0
    /// The foreground goal, as a fraction of the baseline.
    public static let foregroundGoal = 0.5

    /// Every compression measured.
    public struct Report: Sendable {
        /// In the order measured.
        public var results: [CompressionResult]

        /// Each compression's goals, in the order measured.
        public var goals: [BenchmarkGoal] { results.flatMap(\.goals) }

        /// The report as a plain table.
        public func table() -> String {
            var rows: [[String]] = [
                ["catch-up", "fill", "baseline", "during copy", "foreground", "copied", "to tail", "first byte", "copy", "goals"],
                ["", "MB/s", "MB/s", "MB/s", "ratio", "MB", "s", "ms", "MB/s", "copy / fg"],
            ]
            for r in results {
                rows.append([r.compression.rawValue, fixed(r.fill.megabytesPerSecond, 1), fixed(r.baseline.megabytesPerSecond, 1),
                             fixed(r.duringCopy.megabytesPerSecond, 1), fixed(r.foregroundRatio, 2), fixed(Double(r.copiedBytes) / 1e6, 0),
                             r.joined ? fixed(r.timeToJoin.seconds, 2) : "> \(fixed(r.timeToJoin.seconds, 0))",
                             r.firstByte.map { fixed(milliseconds($0), 0) } ?? "-", fixed(r.copyMegabytesPerSecond, 1),
                             "\(r.copyGoalMet ? "met" : "MISSED") / \(r.foregroundGoalMet ? "met" : "MISSED")"])
            }
            var lines = aligned(rows, headerRows: 2)
            for r in results {
                lines.append("\(r.compression): when n4 " + (r.joined ? "joined" : "was given up") + ", it held seq \(r.copiedSeq) and "
                             + "\(fixed(Double(r.copiedBytes) / 1e6, 0)) MB, its source seq \(r.tailSeq) and \(fixed(Double(r.tailBytes) / 1e6, 0)) MB; "
                             + "\(grouped(r.fill.puts)) fill puts, "
                             + "\(grouped(r.baseline.puts)) baseline puts in \(fixed(r.baseline.elapsed.seconds, 1)) s")
            }
            lines.append("goals: copy >= \(fixed(copyGoal, 0)) MB/s (bytes in the new node's data directory / time from add-node to member), "
                         + "foreground >= \(fixed(foregroundGoal * 100, 0))% of the baseline")
            return lines.joined(separator: "\n") + "\n"
        }
    }

    /// Settings.
    public let configuration: Configuration

    /// Creates the benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Measures each compression on a fresh cluster; throws `invalidArgument` for settings out
    /// of range. A new node that does not join within the join timeout is reported, not thrown.
    public func run() async throws(CatenaError) -> Report {
        try configuration.validate()
        var results: [CompressionResult] = []
        for compression in configuration.compressions {
            results.append(try await measure(compression))
        }
        return Report(results: results)
    }

    private func measure(_ compression: Compression) async throws(CatenaError) -> CompressionResult {
        let c = configuration
        let directory = c.directory + "/join-\(compression)"
        return try await BenchCluster.with(executable: c.executable, directory: directory, nodes: 3,
                                           logLevel: c.logLevel) { (cluster) async throws(CatenaError) -> CompressionResult in
            var clientConfiguration = CatenaClient.Configuration()
            clientConfiguration.requestTimeout = .seconds(60)
            let clients = try await BenchCluster.clients(c.clients, of: cluster, configuration: clientConfiguration)
            let outcome = await Swift.Result.catching { () async throws(CatenaError) -> CompressionResult in
                let values = MixedValues(size: c.valueSize)
                let fill = try await Self.fill(clients, count: max(1, c.fillBytes / c.valueSize), values: values)
                c.progress("\(compression): filled \(fixed(Double(fill.puts * fill.valueSize) / 1e6, 0)) MB in \(fixed(fill.elapsed.seconds, 1)) s (\(fixed(fill.megabytesPerSecond, 1)) MB/s)")
                // Foreground keys and values differ from the fill's (indexes from 2^40 on).
                return try await SteadyLoad.with(clients: clients, values: values, keyPrefix: "load",
                                                 firstIndex: 1 << 40) { (load) async throws(CatenaError) -> CompressionResult in
                    try await join(compression, cluster: cluster, directory: directory, load: load, fill: fill)
                }
            }
            for client in clients { await client.close() }
            return try outcome.get()
        }
    }

    /// Measures the baseline, adds `n4` and follows its catch-up until it is a member.
    private func join(_ compression: Compression, cluster: LocalCluster, directory: String, load: SteadyLoad,
                      fill: Throughput) async throws(CatenaError) -> CompressionResult {
        let c = configuration
        let admin = try ChainAdmin(masters: [cluster.masterAddress.description], clusterID: BenchCluster.clusterID, timeout: .seconds(5))
        let baselineStart = ContinuousClock.now
        let before = load.acknowledged
        try await idle(for: c.baseline)
        let baseline = Throughput(puts: load.acknowledged - before, valueSize: c.valueSize, elapsed: ContinuousClock.now - baselineStart)
        c.progress("\(compression): baseline \(fixed(baseline.megabytesPerSecond, 1)) MB/s (\(grouped(baseline.puts)) puts of \(sizeName(c.valueSize)))")

        let id = try NodeID("n4")
        let dataDirectory = directory + "/n4"
        let port = try BenchCluster.freeLoopbackPort()
        let address = "127.0.0.1:\(port)"
        let arguments = ["node", "--id", id.rawValue, "--cluster", BenchCluster.clusterID, "--listen", address,
                         "--master", cluster.masterAddress.description, "--data-dir", dataDirectory,
                         "--catch-up-compression", compression.rawValue, "--catch-up-rate", "\(c.catchUpRate)",
                         "--log-level", c.logLevel]
        // The process prints its ready line only once the master knows it, so it is started
        // alongside the add rather than before it.
        let outcome = await withTaskGroup(of: Swift.Result<Void, CatenaError>.self) { group in
            group.addTask {
                await Swift.Result.catching { () async throws(CatenaError) in
                    _ = try await cluster.startChild(id.rawValue, arguments: arguments, timeout: c.joinTimeout + .seconds(30))
                }
            }
            let measured = await Swift.Result.catching { () async throws(CatenaError) -> CompressionResult in
                try await BenchCluster.waitUntilAccepting(port: port, timeout: .seconds(30))
                return try await follow(compression, id: id, address: address, dataDirectory: dataDirectory, clusterDirectory: directory,
                                        cluster: cluster,
                                        admin: admin, load: load, fill: fill, baseline: baseline)
            }
            // A process that never became ready would keep its start waiting.
            if case .failure = measured { cluster.signal(id.rawValue, SIGKILL) }
            var started: Swift.Result<Void, CatenaError> = .success(())
            for await r in group { started = r }
            if case .success(let result) = measured, result.joined, case .failure(let error) = started {
                return Swift.Result<CompressionResult, CatenaError>.failure(error)
            }
            return measured
        }
        return try outcome.get()
    }

    /// Adds the node and polls until it is a member.
    private func follow(_ compression: Compression, id: NodeID, address: String, dataDirectory: String, clusterDirectory: String,
                        cluster: LocalCluster,
                        admin: ChainAdmin, load: SteadyLoad, fill: Throughput, baseline: Throughput) async throws(CatenaError) -> CompressionResult {
        let c = configuration
        let initialBytes = BenchCluster.bytes(in: dataDirectory)
        let start = ContinuousClock.now
        let before = load.acknowledged
        _ = try await admin.addNode(id, address: address)
        var firstByte: Duration?
        var lastReport = start
        var reportedPuts = before
        var joined = false
        var copiedSeq: UInt64 = 0
        var tailSeq: UInt64 = 0
        var tailName = "n3"
        while true {
            let status = try? await admin.status()
            let now = ContinuousClock.now
            let bytes = BenchCluster.bytes(in: dataDirectory)
            if firstByte == nil, bytes > initialBytes { firstByte = now - start }
            if let status {
                let me = status.nodes.first { $0.id == id }
                copiedSeq = me?.highestLSN.seq ?? copiedSeq
                // The tail it copies from: the last member but itself.
                if let tail = status.nodes.last(where: { $0.role != nil && $0.id != id }) {
                    tailSeq = tail.highestLSN.seq
                    tailName = tail.id.rawValue
                }
                if me?.role != nil {
                    joined = true
                    break
                }
            }
            guard cluster.isRunning(id.rawValue) else {
                throw CatenaError(.unavailable, "\(id) exited while catching up (status \(await cluster.waitForExit(id.rawValue, timeout: .seconds(1)).map { "\($0)" } ?? "?"))")
            }
            if now - start >= c.joinTimeout { break }
            if now - lastReport >= .seconds(2) {
                let puts = load.acknowledged
                let foreground = Throughput(puts: puts - reportedPuts, valueSize: c.valueSize, elapsed: now - lastReport)
                c.progress("\(compression): \(id) holds \(fixed(Double(bytes) / 1e6, 0)) MB after \(fixed((now - start).seconds, 1)) s, "
                           + "seq \(copiedSeq) of \(tailSeq); foreground \(fixed(foreground.megabytesPerSecond, 1)) MB/s over the last \(fixed((now - lastReport).seconds, 1)) s")
                lastReport = now
                reportedPuts = puts
            }
            try await idle(for: .milliseconds(100))
        }
        let elapsed = ContinuousClock.now - start
        let during = Throughput(puts: load.acknowledged - before, valueSize: c.valueSize, elapsed: elapsed)
        let result = CompressionResult(compression: compression, fill: fill, baseline: baseline, duringCopy: during, joined: joined, firstByte: firstByte,
                            timeToJoin: elapsed, copiedBytes: BenchCluster.bytes(in: dataDirectory),
                            tailBytes: BenchCluster.bytes(in: clusterDirectory + "/" + tailName), copiedSeq: copiedSeq, tailSeq: tailSeq)
        c.progress("\(compression): \(id) " + (joined ? "joined as tail" : "had not joined") + " after \(fixed(elapsed.seconds, 2)) s: "
                   + "\(fixed(Double(result.copiedBytes) / 1e6, 0)) MB copied (\(fixed(result.copyMegabytesPerSecond, 1)) MB/s); "
                   + "foreground \(fixed(during.megabytesPerSecond, 1)) MB/s (\(fixed(result.foregroundRatio * 100, 0))% of the baseline)")
        return result
    }

    /// Puts `count` values from `clients` (each its share, one at a time), keys `fill/<i>`.
    static func fill(_ clients: [CatenaClient], count: Int, values: MixedValues) async throws(CatenaError) -> Throughput {
        let start = ContinuousClock.now
        let results = await withTaskGroup(of: Swift.Result<Void, CatenaError>.self) { group in
            for (k, client) in clients.enumerated() {
                group.addTask {
                    await Swift.Result.catching { () async throws(CatenaError) in
                        var i = k
                        while i < count {
                            try await client.put("fill/\(i)", values.value(i))
                            i += clients.count
                        }
                    }
                }
            }
            var all: [Swift.Result<Void, CatenaError>] = []
            for await r in group { all.append(r) }
            return all
        }
        for r in results { try r.get() }
        return Throughput(puts: count, valueSize: values.size, elapsed: ContinuousClock.now - start)
    }
}

/// What `catena bench-join --json` writes: the settings, each compression's figures as the
/// table shows them, and the goals. A figure that does not exist (no first byte) is left out.
public struct JoinBenchmarkReport: Codable, Sendable {
    /// Client throughput over an interval.
    public struct Throughput: Codable, Sendable {
        /// Puts acknowledged.
        public var puts: Int
        /// The interval.
        public var seconds: Double
        /// Value megabytes (10^6 bytes) per second.
        public var megabytesPerSecond: Double

        init(_ t: JoinBenchmark.Throughput) {
            puts = t.puts
            seconds = t.elapsed.seconds
            megabytesPerSecond = t.megabytesPerSecond
        }
    }

    /// One compression, on a fresh cluster.
    public struct Result: Codable, Sendable {
        /// The new node's catch-up compression: lz4 or none.
        public var compression: String
        /// Filling the chain.
        public var fill: Throughput
        /// Foreground puts before the add.
        public var baseline: Throughput
        /// Foreground puts from the add until the new node was a member (or given up).
        public var duringCopy: Throughput
        /// During the copy over the baseline (left out when the baseline had no puts).
        public var foregroundRatio: Double?
        /// Whether the new node became a member before the join timeout.
        public var joined: Bool
        /// From the add until it was a member (the tail), or until it was given up.
        public var timeToJoinSeconds: Double
        /// From the add until its data directory first grew.
        public var firstByteMilliseconds: Double?
        /// Bytes in the new node's data directory then.
        public var copiedBytes: Int
        /// Bytes in its source's data directory then.
        public var tailBytes: Int
        /// The new node's highest seq then.
        public var copiedSeq: UInt64
        /// Its source's highest seq then.
        public var tailSeq: UInt64
        /// Megabytes (10^6 bytes) of log copied per second.
        public var copyMegabytesPerSecond: Double
        /// Whether the copy goal was met.
        public var copyGoalMet: Bool
        /// Whether the foreground goal was met.
        public var foregroundGoalMet: Bool
    }

    /// Concurrent clients.
    public var clients: Int
    /// Bytes per value.
    public var valueSize: Int
    /// Bytes of values written before the baseline.
    public var fillBytes: Int
    /// The baseline's configured length.
    public var baselineSeconds: Double
    /// How long the new node may take to join.
    public var joinTimeoutSeconds: Double
    /// The new node's catch-up bound in MB/s (0: none).
    public var catchUpRate: Int
    /// The machine's cores.
    public var cores: Int
    /// In the order measured.
    public var results: [Result]
    /// Each compression's copy and foreground goals, judged.
    public var goals: [BenchmarkGoal]

    /// The report of `report`, measured with `configuration` on a machine with `cores` cores.
    public init(_ report: JoinBenchmark.Report, configuration: JoinBenchmark.Configuration, cores: Int) {
        clients = configuration.clients
        valueSize = configuration.valueSize
        fillBytes = configuration.fillBytes
        baselineSeconds = configuration.baseline.seconds
        joinTimeoutSeconds = configuration.joinTimeout.seconds
        catchUpRate = configuration.catchUpRate
        self.cores = cores
        results = report.results.map { r in
            Result(compression: r.compression.rawValue, fill: Throughput(r.fill), baseline: Throughput(r.baseline),
                   duringCopy: Throughput(r.duringCopy), foregroundRatio: finite(r.foregroundRatio), joined: r.joined,
                   timeToJoinSeconds: r.timeToJoin.seconds, firstByteMilliseconds: r.firstByte.map(milliseconds), copiedBytes: r.copiedBytes,
                   tailBytes: r.tailBytes, copiedSeq: r.copiedSeq, tailSeq: r.tailSeq, copyMegabytesPerSecond: r.copyMegabytesPerSecond,
                   copyGoalMet: r.copyGoalMet, foregroundGoalMet: r.foregroundGoalMet)
        }
        goals = report.goals
    }
}
