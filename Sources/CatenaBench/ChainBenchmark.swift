import CatenaClient
import CatenaCluster
import CatenaCore

/// The chain benchmark behind `catena bench-chain`: put throughput of a 3-node and a 1-node
/// chain of real `catena` processes on loopback, and get throughput from the tail, with many
/// concurrent clients. Replication efficiency = 3 × (3-node put throughput) / (1-node put
/// throughput): on one machine the three replicas share its cores and disk, so a chain that
/// costs nothing beyond the work of three copies scores 1.
public struct ChainBenchmark: Sendable {
    /// Settings.
    public struct Configuration: Sendable {
        /// The `catena` executable to start clusters with.
        public var executable: String
        /// Where clusters keep their data (a fresh subdirectory per cluster, removed afterwards).
        public var directory: String
        /// Concurrent clients (each runs one operation at a time).
        public var clients: Int = 32
        /// Client library instances the clients share, each with its own connections (nil: one
        /// per client). Callers sharing an instance share its connection to each node, where
        /// requests queued in one turn of the event loop leave in one write.
        public var connections: Int?
        /// Value sizes.
        public var sizes: [Int] = [4 << 10, 1 << 20]
        /// Puts per measurement for small values …
        public var smallCount: Int = 40_000
        /// … and at most this many bytes per measurement for large ones.
        public var largeVolume: Int = 1 << 30
        /// Extra arguments for every `catena node` (e.g. `--durability none`).
        public var nodeArguments: [String] = []
        /// Progress lines.
        public var progress: @Sendable (String) -> Void = { _ in }

        /// Creates settings.
        public init(executable: String, directory: String) {
            self.executable = executable
            self.directory = directory
        }
    }

    /// One measurement.
    public struct Measurement: Sendable {
        /// What was measured: "3-node put 4 KiB".
        public var label: String
        /// Operations completed.
        public var operations: Int
        /// Wall time, seconds.
        public var seconds: Double
        /// Value bytes per operation.
        public var valueSize: Int
        /// Latencies.
        public var latency: LatencySummary
        /// CPU time of every process (the clients and the cluster's) during the measurement.
        public var cpu: CPUAccount
        /// CPU microseconds per operation, all processes together.
        public var cpuMicrosecondsPerOperation: Double { cpu.total.total * 1e6 / Double(max(1, operations)) }
        /// Each process's CPU microseconds per operation, user and system apart.
        public var cpuPerOperation: [ProcessShare] {
            let n = Double(max(1, operations))
            return cpu.shares.map { ProcessShare(process: $0.process, userMicroseconds: $0.cpu.user * 1e6 / n, systemMicroseconds: $0.cpu.system * 1e6 / n) }
        }
        /// Operations per second.
        public var opsPerSecond: Double { Double(operations) / seconds }
        /// Value megabytes (10^6) per second.
        public var megabytesPerSecond: Double { Double(operations * valueSize) / seconds / 1e6 }
    }

    /// One process's CPU per operation, microseconds.
    public struct ProcessShare: Codable, Sendable {
        /// "client" (the benchmark's clients), "master", "n1", ...
        public var process: String
        public var userMicroseconds: Double
        public var systemMicroseconds: Double
    }

    /// The results for one value size.
    public struct SizeResult: Sendable {
        /// Value size.
        public var valueSize: Int
        /// Puts to a 1-node chain.
        public var put1: Measurement
        /// Puts to a 3-node chain.
        public var put3: Measurement
        /// Gets from the 3-node chain's tail.
        public var get3: Measurement
        /// 3 × put3 / put1.
        public var efficiency: Double { 3 * put3.opsPerSecond / put1.opsPerSecond }
        /// The goal for this size: 0.8 for 1 MiB and above, 0.6 below.
        public var goal: Double { ChainBenchmark.efficiencyGoal(valueSize: valueSize) }
        /// The efficiency goal of this size, judged.
        public var goalCheck: BenchmarkGoal { ChainBenchmark.goalCheck(valueSize: valueSize, efficiency: efficiency) }
    }

    /// The replication-efficiency goal for values of `valueSize` bytes: 0.8 for 1 MiB and
    /// above, 0.6 below.
    public static func efficiencyGoal(valueSize: Int) -> Double { valueSize >= 1 << 20 ? 0.8 : 0.6 }

    /// The efficiency goal for `valueSize`, judged on `efficiency` (every size measured has one).
    public static func goalCheck(valueSize: Int, efficiency: Double) -> BenchmarkGoal {
        let goal = efficiencyGoal(valueSize: valueSize)
        return BenchmarkGoal(goal: "\(sizeName(valueSize)): replication efficiency >= \(fixed(goal, 1))",
                             measured: "efficiency \(fixed(efficiency, 2))", comparison: .atLeast, threshold: goal, unit: "ratio",
                             value: efficiency)
    }

    /// Settings.
    public let configuration: Configuration

    /// Creates the benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Runs every size: a 1-node chain, then a 3-node chain (puts, then gets of the same keys).
    public func run() async throws(CatenaError) -> [SizeResult] {
        var results: [SizeResult] = []
        for size in configuration.sizes {
            let count = size >= 64 << 10 ? max(configuration.clients, configuration.largeVolume / size) : configuration.smallCount
            let put1 = try await withCluster(nodes: 1, name: "single-\(size)") { (client, cluster) async throws(CatenaError) in
                try await measure("1-node put \(sizeName(size))", count: count, size: size, clients: client, cluster: cluster) { (c, i, value) async throws(CatenaError) in
                    try await c.put("bench/\(i)", value)
                }
            }
            let (put3, get3) = try await withCluster(nodes: 3, name: "chain-\(size)") { (client, cluster) async throws(CatenaError) in
                let put = try await measure("3-node put \(sizeName(size))", count: count, size: size, clients: client, cluster: cluster) { (c, i, value) async throws(CatenaError) in
                    try await c.put("bench/\(i)", value)
                }
                let get = try await measure("3-node get \(sizeName(size))", count: count, size: size, clients: client, cluster: cluster) { (c, i, _) async throws(CatenaError) in
                    let object = try await c.get("bench/\(i)")
                    guard object.bytes.count == size else {
                        throw CatenaError(.corruption, "bench/\(i) came back with \(object.bytes.count) bytes, not \(size)")
                    }
                }
                return (put, get)
            }
            let result = SizeResult(valueSize: size, put1: put1, put3: put3, get3: get3)
            configuration.progress("\(sizeName(size)): replication efficiency \(fixed(result.efficiency, 2)) (goal \(fixed(result.goal, 1)))")
            results.append(result)
        }
        return results
    }

    /// Starts a cluster of `nodes` nodes (release-built `catena` processes), connects
    /// ``Configuration/clients`` clients, runs `body`, stops everything.
    private func withCluster<R: Sendable>(nodes: Int, name: String,
                                          _ body: ([CatenaClient], LocalCluster) async throws(CatenaError) -> R) async throws(CatenaError) -> R {
        try await BenchCluster.with(executable: configuration.executable, directory: configuration.directory + "/" + name, nodes: nodes,
                                    nodeArguments: configuration.nodeArguments) { (cluster) async throws(CatenaError) -> R in
            var clientConfiguration = CatenaClient.Configuration()
            clientConfiguration.requestTimeout = .seconds(60)
            // The table's "tail get/s" is the tail's read path, as it always was; reads from
            // every member are tools/bench-read-scaling.sh's business (nodes sharing two cores
            // here, spreading reads over them shows nothing a production chain would).
            clientConfiguration.readMode = .tail
            let instances = try await BenchCluster.clients(min(configuration.connections ?? configuration.clients, configuration.clients),
                                                           of: cluster, configuration: clientConfiguration)
            let clients = (0..<configuration.clients).map { instances[$0 % instances.count] }
            let outcome = await Result.catching { () async throws(CatenaError) -> R in try await body(clients, cluster) }
            for c in instances { await c.close() }
            return try outcome.get()
        }
    }

    /// Runs `count` operations, spread over the clients (each runs its share one at a time).
    private func measure(_ label: String, count: Int, size: Int, clients: [CatenaClient], cluster: LocalCluster,
                         _ operation: @escaping @Sendable (CatenaClient, Int, [UInt8]) async throws(CatenaError) -> Void) async throws(CatenaError) -> Measurement {
        var rng = SplitMix64(seed: UInt64(size))
        var value = [UInt8](repeating: 0, count: size)
        value.withUnsafeMutableBytes { raw in
            for i in stride(from: 0, to: size - 7, by: 8) { raw.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }
        }
        let template = value
        let processes = cluster.children.map { (name: $0.name, pid: $0.pid) }
        let cpuBefore = CPUAccount.Reading(processes: processes)
        let start = ContinuousClock.now
        let perClient: [Result<[Int64], CatenaError>] = await withTaskGroup(of: Result<[Int64], CatenaError>.self) { group in
            for (k, client) in clients.enumerated() {
                group.addTask {
                    await Result.catching { () async throws(CatenaError) in
                        var latencies: [Int64] = []
                        var i = k
                        var value = template
                        while i < count {
                            // A different value per key (its index in the first bytes).
                            withUnsafeBytes(of: UInt64(i)) { stamp in
                                for j in 0..<Swift.min(8, value.count) { value[j] = stamp[j] }
                            }
                            let t0 = ContinuousClock.now
                            try await operation(client, i, value)
                            latencies.append((ContinuousClock.now - t0).nanosecondsClamped)
                            i += clients.count
                        }
                        return latencies
                    }
                }
            }
            var all: [Result<[Int64], CatenaError>] = []
            for await r in group { all.append(r) }
            return all
        }
        let seconds = Double((ContinuousClock.now - start).nanosecondsClamped) / 1e9
        let cpu = CPUAccount(from: cpuBefore, to: CPUAccount.Reading(processes: processes))
        var latencies: [Int64] = []
        for r in perClient { latencies += try r.get() }
        let m = Measurement(label: label, operations: latencies.count, seconds: seconds, valueSize: size, latency: LatencySummary(nanoseconds: latencies), cpu: cpu)
        configuration.progress("\(label): \(m.operations) ops in \(fixed(seconds, 2)) s = \(fixed(m.opsPerSecond, 0)) ops/s, \(fixed(m.megabytesPerSecond, 1)) MB/s, p50 \(millis(m.latency.p50)) ms, p99 \(millis(m.latency.p99)) ms, CPU \(fixed(m.cpuMicrosecondsPerOperation, 0)) µs/op")
        return m
    }
}

/// What `catena bench-chain --json` writes: every measurement with its throughput, latencies
/// and the CPU time of each process per operation, and the goals.
public struct ChainBenchmarkReport: Codable, Sendable {
    /// One measurement.
    public struct Run: Codable, Sendable {
        public var label: String
        public var operations: Int
        public var seconds: Double
        public var opsPerSecond: Double
        public var megabytesPerSecond: Double
        public var latencyNanoseconds: LatencySummary
        /// All processes together, user + system.
        public var cpuMicrosecondsPerOperation: Double
        /// Each process, user and system apart, microseconds per operation.
        public var cpuPerOperation: [ChainBenchmark.ProcessShare]

        init(_ m: ChainBenchmark.Measurement) {
            label = m.label
            operations = m.operations
            seconds = m.seconds
            opsPerSecond = m.opsPerSecond
            megabytesPerSecond = m.megabytesPerSecond
            latencyNanoseconds = m.latency
            cpuMicrosecondsPerOperation = m.cpuMicrosecondsPerOperation
            cpuPerOperation = m.cpuPerOperation
        }
    }

    /// One value size.
    public struct Size: Codable, Sendable {
        public var valueSize: Int
        public var efficiency: Double
        public var goal: Double
        public var goalMet: Bool
        public var put1: Run
        public var put3: Run
        public var get3: Run
    }

    public var clients: Int
    public var cores: Int
    public var sizes: [Size]
    /// The efficiency goal of each size, judged (as each size's `goal` and `goalMet`).
    public var goals: [BenchmarkGoal]

    /// The report of `results`.
    public init(_ results: [ChainBenchmark.SizeResult], clients: Int, cores: Int) {
        self.clients = clients
        self.cores = cores
        goals = results.map(\.goalCheck)
        sizes = zip(results, goals).map { r, check in
            Size(valueSize: r.valueSize, efficiency: r.efficiency, goal: r.goal, goalMet: check.met == true,
                 put1: Run(r.put1), put3: Run(r.put3), get3: Run(r.get3))
        }
    }
}
