import CatenaClient
import CatenaCluster
import CatenaCore

#if canImport(Glibc)
import Glibc
#endif

/// The failover benchmark behind `catena bench-failover`: how long writes stop when a member of
/// a 3-node chain of real `catena` processes dies, and how long the dead node takes to rejoin
/// once restarted.
///
/// A run starts a fresh cluster whose master declares a member failed after
/// ``Configuration/failureTimeout``, and a steady load of 4 KiB puts from
/// ``Configuration/clients`` clients whose attempts time out after half the failure timeout.
/// For each role in turn — head, middle, tail — it SIGKILLs the node in that role and records
/// the instant; measures, from that instant, the time to the first acknowledgement of a put
/// *invoked* after it, and the longest time between consecutive acknowledgements from the last
/// one before the kill until the node is restarted; waits ``Configuration/settle``, restarts the
/// node on its data directory and measures the time until the master lists it as a healthy
/// member again (it truncates, catches up from the tail and is appended as the new tail); waits
/// ``Configuration/settle`` again before the next role. The goal: writes resume within 1.5 × the
/// failure timeout.
public struct FailoverBenchmark: Sendable {
    /// Settings.
    public struct Configuration: Sendable {
        /// The `catena` executable to start clusters with.
        public var executable: String
        /// Where clusters keep their data (a fresh subdirectory per run, removed afterwards).
        public var directory: String
        /// The master's failure timeout (the topology's `heartbeat.timeout_ms`).
        public var failureTimeout: Duration = .milliseconds(1000)
        /// The nodes' heartbeat interval (the topology's `heartbeat.interval_ms`).
        public var heartbeatInterval: Duration = .milliseconds(100)
        /// Concurrent clients, each putting one value at a time.
        public var clients: Int = 16
        /// Bytes per value.
        public var valueSize: Int = 4 << 10
        /// Runs, each on a fresh cluster.
        public var runs: Int = 3
        /// Steady load before the first kill, after writes resumed and after a rejoin.
        public var settle: Duration = .seconds(1)
        /// The children's log level.
        public var logLevel: String = "warning"
        /// Progress lines.
        public var progress: @Sendable (String) -> Void = { _ in }

        /// Creates settings.
        public init(executable: String, directory: String) {
            self.executable = executable
            self.directory = directory
        }

        /// The clients' attempt timeout: half the failure timeout.
        public var attemptTimeout: Duration { failureTimeout / 2 }

        /// The accepted ranges: `invalidArgument` names the setting that is out of its range.
        public func validate() throws(CatenaError) {
            let limit = Duration.milliseconds(HeartbeatSettings.maximumMilliseconds)
            let ms = { (d: Duration) in "\(fixed(milliseconds(d), d.isWholeMilliseconds ? 0 : 3)) ms" }
            guard heartbeatInterval >= .milliseconds(1), heartbeatInterval <= limit, heartbeatInterval.isWholeMilliseconds else {
                throw CatenaError(.invalidArgument, "the heartbeat interval must be 1 ... 3600000 whole milliseconds, not \(ms(heartbeatInterval))")
            }
            guard failureTimeout > heartbeatInterval, failureTimeout <= .seconds(60), failureTimeout.isWholeMilliseconds else {
                throw CatenaError(.invalidArgument, "the failure timeout must be whole milliseconds, above the heartbeat interval "
                                  + "(\(ms(heartbeatInterval))) and at most 60000 ms, not \(ms(failureTimeout))")
            }
            guard (1...1024).contains(clients) else { throw CatenaError(.invalidArgument, "clients must be 1 ... 1024, not \(clients)") }
            guard (64...(1 << 20)).contains(valueSize) else {
                throw CatenaError(.invalidArgument, "the value size must be 64 B ... 1 MiB, not \(valueSize)")
            }
            guard (1...20).contains(runs) else { throw CatenaError(.invalidArgument, "runs must be 1 ... 20, not \(runs)") }
            guard settle >= .zero, settle <= .seconds(60) else { throw CatenaError(.invalidArgument, "the settle time must be 0 ... 60000 ms, not \(ms(settle))") }
        }
    }

    /// The member killed.
    public enum Role: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case head, middle, tail
        var chainRole: ChainRole {
            switch self {
            case .head: .head
            case .middle: .middle
            case .tail: .tail
            }
        }
        public var description: String { rawValue }
    }

    /// What the writers saw around one kill.
    public struct Outage: Hashable, Sendable {
        /// From the kill to the first acknowledgement of a put invoked at or after it; nil: none
        /// before the window ended.
        public var nextWrite: Duration?
        /// The longest time between consecutive acknowledgements, from the last one at or
        /// before the kill to the end of the window (or to the end itself if none followed).
        public var longestGap: Duration
    }

    /// One kill and rejoin.
    public struct RoleResult: Hashable, Sendable {
        /// The role the node had when it was killed.
        public var role: Role
        /// The node killed.
        public var node: String
        /// What the writers saw from the kill until the restart.
        public var outage: Outage
        /// From the restart until the restarted process printed its ready line.
        public var ready: Duration
        /// From the restart until the master listed it as a healthy member again.
        public var rejoin: Duration
        /// The longest time between acknowledgements from the restart until ``Configuration/settle``
        /// after the rejoin.
        public var rejoinGap: Duration
    }

    /// One run: a fresh cluster, each role killed and restarted in turn.
    public struct Run: Hashable, Sendable {
        /// 1, 2, …
        public var index: Int
        /// Head, middle, tail.
        public var roles: [RoleResult]
        /// Puts acknowledged during the run.
        public var acknowledged: Int
        /// Puts that failed at their deadline (each retried in the client until then).
        public var failed: Int
        /// The first error a put failed with.
        public var firstFailure: CatenaError?
    }

    /// Every run.
    public struct Report: Sendable {
        /// The failure timeout the master ran with.
        public var failureTimeout: Duration
        /// The runs.
        public var runs: [Run]

        /// The goal: writes resume (next acknowledged write, and the longest gap) within this.
        public var goal: Duration { failureTimeout * 3 / 2 }

        /// Whether `outage` meets the goal.
        public func meetsGoal(_ outage: Outage) -> Bool {
            guard let next = outage.nextWrite else { return false }
            return next < goal && outage.longestGap < goal
        }

        /// The goals of `role`, judged on the medians over the runs (a run's own figures when
        /// there is one): the next write below ``goal``, and the write gap below it. A run in
        /// which no write resumed misses the next-write goal; with no run that killed `role`,
        /// neither is measured.
        public func goals(_ role: Role) -> [BenchmarkGoal] {
            let results = runs.compactMap { $0.roles.first { $0.role == role } }
            let limit = milliseconds(goal)
            let stated = "< 1.5 x failure timeout = \(fixed(limit, 0)) ms"
            let nextGoal = "\(role): next write \(stated)"
            let gapGoal = "\(role): write gap \(stated)"
            guard !results.isEmpty else {
                let none = "no run killed the \(role)"
                return [BenchmarkGoal(goal: nextGoal, measured: none, comparison: .below, threshold: limit, unit: "ms", value: nil),
                        BenchmarkGoal(goal: gapGoal, measured: none, comparison: .below, threshold: limit, unit: "ms", value: nil)]
            }
            func text(_ s: StorageBenchmark.Spread) -> String {
                results.count == 1 ? "\(fixed(s.median, 1)) ms"
                    : "median \(fixed(s.median, 1)) ms over \(results.count) runs, range \(fixed(s.min, 1))-\(fixed(s.max, 1))"
            }
            let next = StorageBenchmark.Spread(results.compactMap { $0.outage.nextWrite.map(milliseconds) })
            let gap = StorageBenchmark.Spread(results.map { milliseconds($0.outage.longestGap) })!
            let stalled = results.count(where: { $0.outage.nextWrite == nil })
            var nextMeasured = next.map(text) ?? ""
            if stalled > 0 {
                nextMeasured = "no write invoked after the kill was acknowledged in \(stalled) of \(results.count) run\(results.count == 1 ? "" : "s")"
                    + (next.map { "; the others: " + text($0) } ?? "")
            }
            return [
                BenchmarkGoal(goal: nextGoal, measured: nextMeasured, comparison: .below, threshold: limit, unit: "ms", value: next?.median,
                              met: stalled == 0 && next.map { $0.median < limit } == true),
                BenchmarkGoal(goal: gapGoal, measured: text(gap), comparison: .below, threshold: limit, unit: "ms", value: gap.median),
            ]
        }

        /// Every role's goals: head, middle, tail.
        public var goals: [BenchmarkGoal] { Role.allCases.flatMap(goals) }

        /// The median, minimum and maximum over the runs of `value` for `role`, in milliseconds.
        public func spread(_ role: Role, _ value: (RoleResult) -> Duration?) -> StorageBenchmark.Spread? {
            StorageBenchmark.Spread(runs.compactMap { $0.roles.first { $0.role == role }.flatMap(value).map(milliseconds) })
        }

        /// The report as a plain table: a row per run and role, then the medians per role.
        public func table() -> String {
            let timeout = milliseconds(failureTimeout)
            let ms = { (x: Double?) in x.map { fixed($0, 1) } ?? "-" }
            let ratio = { (x: Double?) in x.map { fixed($0 / timeout, 2) } ?? "-" }
            let whole = { (x: Double?) in x.map { fixed($0, 0) } ?? "-" }
            var rows: [[String]] = [
                ["run", "role", "node", "next write", "write gap", "next write", "write gap", "goal", "restart", "rejoined", "rejoin gap"],
                ["", "", "", "ms", "ms", "/ timeout", "/ timeout", "< 1.5", "ready ms", "ms", "ms"],
            ]
            func row(_ run: String, _ role: Role, _ node: String, next: Double?, gap: Double?, met: Bool?, ready: Double?, rejoin: Double?,
                     rejoinGap: Double?) -> [String] {
                [run, "\(role)", node, ms(next), ms(gap), ratio(next), ratio(gap), met.map { $0 ? "met" : "MISSED" } ?? "-",
                 whole(ready), whole(rejoin), ms(rejoinGap)]
            }
            for run in runs {
                for r in run.roles {
                    rows.append(row("\(run.index)", r.role, r.node, next: r.outage.nextWrite.map(milliseconds), gap: milliseconds(r.outage.longestGap),
                                    met: meetsGoal(r.outage), ready: milliseconds(r.ready), rejoin: milliseconds(r.rejoin),
                                    rejoinGap: milliseconds(r.rejoinGap)))
                }
            }
            if runs.count > 1 {
                for role in Role.allCases {
                    let next = spread(role) { $0.outage.nextWrite }
                    let gap = spread(role) { $0.outage.longestGap }
                    let verdicts = goals(role).map(\.met)
                    let met: Bool? = verdicts.contains(nil) ? nil : verdicts.allSatisfy { $0 == true }
                    rows.append(row("median", role, "", next: next?.median, gap: gap?.median, met: met, ready: spread(role) { $0.ready }?.median,
                                    rejoin: spread(role) { $0.rejoin }?.median, rejoinGap: spread(role) { $0.rejoinGap }?.median))
                }
            }
            var lines = aligned(rows, headerRows: 2)
            for run in runs {
                lines.append("run \(run.index): \(grouped(run.acknowledged)) puts acknowledged, \(run.failed) failed"
                             + (run.firstFailure.map { " (first: \($0))" } ?? ""))
            }
            lines.append("failure timeout \(fixed(timeout, 0)) ms; goal: next acknowledged write and longest write gap < 1.5 x timeout = \(fixed(milliseconds(goal), 0)) ms")
            return lines.joined(separator: "\n") + "\n"
        }
    }

    /// Settings.
    public let configuration: Configuration

    /// Creates the benchmark.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Runs ``Configuration/runs`` times; throws `invalidArgument` for settings out of range, and
    /// `timeout` if writes do not resume or a node does not rejoin within a minute (after which
    /// the chain is not worth measuring further).
    public func run() async throws(CatenaError) -> Report {
        try configuration.validate()
        var runs: [Run] = []
        for index in 1...configuration.runs {
            runs.append(try await runOnce(index))
        }
        return Report(failureTimeout: configuration.failureTimeout, runs: runs)
    }

    private func runOnce(_ index: Int) async throws(CatenaError) -> Run {
        let c = configuration
        let heartbeat = HeartbeatSettings(intervalMilliseconds: Int(milliseconds(c.heartbeatInterval)),
                                          timeoutMilliseconds: Int(milliseconds(c.failureTimeout)))
        return try await BenchCluster.with(executable: c.executable, directory: c.directory + "/failover-\(index)", nodes: 3,
                                           heartbeat: heartbeat, logLevel: c.logLevel) { (cluster) async throws(CatenaError) -> Run in
            var clientConfiguration = CatenaClient.Configuration()
            clientConfiguration.attemptTimeout = c.attemptTimeout
            clientConfiguration.requestTimeout = max(.seconds(30), c.failureTimeout * 20)
            let clients = try await BenchCluster.clients(c.clients, of: cluster, configuration: clientConfiguration)
            let outcome = await Result.catching { () async throws(CatenaError) -> Run in
                let admin = try ChainAdmin(masters: [cluster.masterAddress.description], clusterID: BenchCluster.clusterID, timeout: .seconds(5))
                return try await SteadyLoad.with(clients: clients, values: MixedValues(size: c.valueSize),
                                                 keyPrefix: "failover") { (load) async throws(CatenaError) -> Run in
                    try await waitUntil("the chain has 3 healthy members", timeout: .seconds(30)) { () async throws(CatenaError) in
                        let status = try await admin.status()
                        return status.nodes.count == 3 && status.nodes.allSatisfy { $0.role != nil && $0.health == .healthy }
                    }
                    try await idle(for: c.settle)
                    var roles: [RoleResult] = []
                    for role in Role.allCases {
                        roles.append(try await killAndRestart(role, run: index, cluster: cluster, admin: admin, load: load))
                    }
                    return Run(index: index, roles: roles, acknowledged: load.acknowledged, failed: load.failed, firstFailure: load.firstFailure)
                }
            }
            for client in clients { await client.close() }
            return try outcome.get()
        }
    }

    /// Kills the node in `role`, measures until writes resume, restarts it and waits until it
    /// is a healthy member again.
    private func killAndRestart(_ role: Role, run: Int, cluster: LocalCluster, admin: ChainAdmin,
                                load: SteadyLoad) async throws(CatenaError) -> RoleResult {
        let c = configuration
        let status = try await admin.status()
        guard let victim = status.nodes.first(where: { $0.role == role.chainRole }) else {
            throw CatenaError(.unavailable, "run \(run): the chain has no \(role) (members \(status.nodes.map { "\($0.id):\($0.role.map { "\($0)" } ?? "-")" }))")
        }
        let name = victim.id.rawValue
        let cursor = load.recorded
        let kill = load.now
        cluster.signal(name, SIGKILL)
        guard await cluster.waitForExit(name, timeout: .seconds(10)) != nil else {
            throw CatenaError(.timeout, "run \(run): \(name) did not exit after SIGKILL")
        }
        // Writes resume: a put invoked after the kill is acknowledged. Acknowledgements recorded
        // before the kill belong to puts invoked before it.
        var firstAfter: Int64?
        var scanned = cursor
        try await waitUntil("a write invoked after killing the \(role) \(name) is acknowledged", timeout: .seconds(60)) { () async throws(CatenaError) in
            let fresh = load.acknowledgements(from: scanned)
            scanned += fresh.count
            firstAfter = fresh.filter { $0.invoked >= kill }.map(\.acknowledged).min()
            return firstAfter != nil
        }
        let resumed = Duration.nanoseconds(firstAfter! - kill)
        c.progress("run \(run): killed the \(role) \(name); a write invoked after the kill was acknowledged \(fixed(milliseconds(resumed), 1)) ms later")
        try await waitUntil("the master removed \(name)", timeout: .seconds(60)) { () async throws(CatenaError) in
            try await admin.status().nodes.first { $0.id == victim.id }?.role == nil
        }
        try await idle(for: c.settle)

        let restart = load.now
        let start = ContinuousClock.now
        try await cluster.restart(name, timeout: .seconds(60))
        let ready = ContinuousClock.now - start
        try await waitUntil("\(name) is a healthy member again", timeout: .seconds(60)) { () async throws(CatenaError) in
            guard let node = try await admin.status().nodes.first(where: { $0.id == victim.id }) else { return false }
            return node.role != nil && node.health == .healthy
        }
        let rejoin = ContinuousClock.now - start
        let after = try await admin.status()
        c.progress("run \(run): \(name) restarted (ready after \(fixed(milliseconds(ready), 0)) ms) and rejoined after \(fixed(milliseconds(rejoin), 0)) ms; chain \(after.nodes.filter { $0.role != nil }.map(\.id.rawValue).joined(separator: " -> ")), epoch \(after.epoch)")
        try await idle(for: c.settle)
        let end = load.now
        let acks = load.acknowledgements()
        return RoleResult(role: role, node: name, outage: Self.outage(acks, kill: kill, end: restart), ready: ready, rejoin: rejoin,
                          rejoinGap: Self.longestGap(acks, from: restart, to: end))
    }

    /// What `acks` show around a kill at `kill`, until `end` (nanoseconds on the load's clock).
    static func outage(_ acks: [SteadyLoad.Ack], kill: Int64, end: Int64) -> Outage {
        let next = acks.filter { $0.invoked >= kill && $0.acknowledged <= end }.map(\.acknowledged).min()
        return Outage(nextWrite: next.map { .nanoseconds($0 - kill) }, longestGap: longestGap(acks, from: kill, to: end))
    }

    /// The longest time between consecutive acknowledgements in `acks`, counted from the last
    /// one at or before `from` (or `from` itself) up to `to`.
    static func longestGap(_ acks: [SteadyLoad.Ack], from: Int64, to: Int64) -> Duration {
        let times = acks.map(\.acknowledged)
        var previous = times.filter { $0 <= from }.max() ?? from
        var longest: Int64 = 0
        for t in times.filter({ $0 > from && $0 <= to }).sorted() {
            longest = max(longest, t - previous)
            previous = t
        }
        longest = max(longest, to - previous)
        return .nanoseconds(longest)
    }
}

/// Polls `condition` every 20 ms until it holds; throws `timeout` naming `what` after `timeout`.
/// Errors of `condition` (a master that does not answer for a moment) count as "not yet".
func waitUntil(_ what: String, timeout: Duration, _ condition: () async throws(CatenaError) -> Bool) async throws(CatenaError) {
    let deadline = ContinuousClock.now + timeout
    var last: CatenaError?
    while true {
        do throws(CatenaError) {
            if try await condition() { return }
        } catch {
            last = error
        }
        guard ContinuousClock.now < deadline else {
            throw CatenaError(.timeout, "timed out after \(timeout) waiting until \(what)" + (last.map { " (last error: \($0))" } ?? ""))
        }
        try? await Task.sleep(for: .milliseconds(20))
    }
}

/// Sleeps for `duration`; a cancelled task throws `closed`.
func idle(for duration: Duration) async throws(CatenaError) {
    do {
        try await Task.sleep(for: duration)
    } catch {
        throw CatenaError(.closed, "cancelled")
    }
}

extension Duration {
    /// Whether this is a whole number of milliseconds.
    var isWholeMilliseconds: Bool { components.attoseconds % 1_000_000_000_000_000 == 0 }
}

/// What `catena bench-failover --json` writes: the settings, every kill as the table shows it,
/// the medians per role, and the goals. Durations in milliseconds; a figure that does not
/// exist (no write resumed) is left out.
public struct FailoverBenchmarkReport: Codable, Sendable {
    /// One kill and restart.
    public struct Kill: Codable, Sendable {
        /// The role of the node killed: head, middle or tail.
        public var role: String
        /// The node killed.
        public var node: String
        /// From the kill to the acknowledgement of the first put invoked after it.
        public var nextWriteMilliseconds: Double?
        /// The longest time between acknowledgements around the kill.
        public var writeGapMilliseconds: Double
        /// ``nextWriteMilliseconds`` over the failure timeout.
        public var nextWriteTimeouts: Double?
        /// ``writeGapMilliseconds`` over the failure timeout.
        public var writeGapTimeouts: Double
        /// Whether this kill's next write and write gap were both below the goal.
        public var goalMet: Bool
        /// From the restart until the process was ready.
        public var restartReadyMilliseconds: Double
        /// From the restart until the master listed the node as a healthy member again.
        public var rejoinedMilliseconds: Double
        /// The longest time between acknowledgements while it rejoined.
        public var rejoinGapMilliseconds: Double
    }

    /// One run, on a fresh cluster.
    public struct Run: Codable, Sendable {
        /// 1, 2, …
        public var index: Int
        /// Head, middle, tail.
        public var kills: [Kill]
        /// Puts acknowledged during the run.
        public var acknowledged: Int
        /// Puts that failed at their deadline.
        public var failed: Int
        /// The first error a put failed with.
        public var firstFailure: String?
    }

    /// One role over the runs: median, smallest and largest.
    public struct Role: Codable, Sendable {
        /// Head, middle or tail.
        public var role: String
        /// Next write, over the runs in which a write resumed.
        public var nextWriteMilliseconds: StorageBenchmark.Spread?
        /// Write gap.
        public var writeGapMilliseconds: StorageBenchmark.Spread?
        /// Restart until ready.
        public var restartReadyMilliseconds: StorageBenchmark.Spread?
        /// Restart until a healthy member again.
        public var rejoinedMilliseconds: StorageBenchmark.Spread?
        /// Longest write gap while rejoining.
        public var rejoinGapMilliseconds: StorageBenchmark.Spread?
        /// Runs in which no write invoked after the kill was acknowledged before the restart.
        public var runsWithoutNextWrite: Int
        /// Whether both of the role's goals were met (left out when not measured).
        public var goalMet: Bool?
    }

    /// The master's failure timeout (`heartbeat.timeout_ms`).
    public var failureTimeoutMilliseconds: Double
    /// The nodes' heartbeat interval.
    public var heartbeatIntervalMilliseconds: Double
    /// The clients' attempt timeout.
    public var attemptTimeoutMilliseconds: Double
    /// Steady load before the first kill, after writes resumed and after a rejoin.
    public var settleMilliseconds: Double
    /// Concurrent clients.
    public var clients: Int
    /// Bytes per value.
    public var valueSize: Int
    /// The machine's cores.
    public var cores: Int
    /// Next write and write gap must stay below this: 1.5 × the failure timeout.
    public var goalMilliseconds: Double
    /// Every run.
    public var runs: [Run]
    /// Per role, over the runs; the goals are judged on these medians.
    public var roles: [Role]
    /// Each role's next-write and write-gap goals, judged.
    public var goals: [BenchmarkGoal]

    /// The report of `report`, measured with `configuration` on a machine with `cores` cores.
    public init(_ report: FailoverBenchmark.Report, configuration: FailoverBenchmark.Configuration, cores: Int) {
        let timeout = milliseconds(report.failureTimeout)
        failureTimeoutMilliseconds = timeout
        heartbeatIntervalMilliseconds = milliseconds(configuration.heartbeatInterval)
        attemptTimeoutMilliseconds = milliseconds(configuration.attemptTimeout)
        settleMilliseconds = milliseconds(configuration.settle)
        clients = configuration.clients
        valueSize = configuration.valueSize
        self.cores = cores
        goalMilliseconds = milliseconds(report.goal)
        runs = report.runs.map { run in
            Run(index: run.index, kills: run.roles.map { r in
                let next = r.outage.nextWrite.map(milliseconds)
                let gap = milliseconds(r.outage.longestGap)
                return Kill(role: r.role.rawValue, node: r.node, nextWriteMilliseconds: next, writeGapMilliseconds: gap,
                            nextWriteTimeouts: next.map { $0 / timeout }, writeGapTimeouts: gap / timeout, goalMet: report.meetsGoal(r.outage),
                            restartReadyMilliseconds: milliseconds(r.ready), rejoinedMilliseconds: milliseconds(r.rejoin),
                            rejoinGapMilliseconds: milliseconds(r.rejoinGap))
            }, acknowledged: run.acknowledged, failed: run.failed, firstFailure: run.firstFailure.map { "\($0)" })
        }
        roles = FailoverBenchmark.Role.allCases.map { role in
            let verdicts = report.goals(role).map(\.met)
            return Role(role: role.rawValue, nextWriteMilliseconds: report.spread(role) { $0.outage.nextWrite },
                        writeGapMilliseconds: report.spread(role) { $0.outage.longestGap },
                        restartReadyMilliseconds: report.spread(role) { $0.ready }, rejoinedMilliseconds: report.spread(role) { $0.rejoin },
                        rejoinGapMilliseconds: report.spread(role) { $0.rejoinGap },
                        runsWithoutNextWrite: report.runs.count(where: { $0.roles.contains { $0.role == role && $0.outage.nextWrite == nil } }),
                        goalMet: verdicts.contains(nil) ? nil : verdicts.allSatisfy { $0 == true })
        }
        goals = report.goals
    }
}
