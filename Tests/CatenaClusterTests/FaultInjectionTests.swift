import CatenaClient
import CatenaCluster
import CatenaCore
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Faults injected into real `catena` processes on 127.0.0.1 (DESIGN.md, "Invariants"): members
/// SIGKILLed and restarted in turn, a head or a tail paused (SIGSTOP) past the failure timeout
/// and resumed, a head killed while its log runs ahead of the rest of the chain — all under
/// concurrent clients (eight, mostly) whose every operation is recorded. Then:
/// the history is linearizable per key (3), every acknowledged write is in every replica's log
/// and the final read of its key is it or later (1, 5), and the replicas' logs are identical (4).
///
/// Heartbeats every 50 ms and a 500 ms failure timeout, so a failover takes well under a second.
/// Set `CATENA_TEST_LOG_DIR` to keep the children's logs (info level), one file per test.
@Suite("Fault injection", .serialized)
struct FaultInjectionTests {
    @Test("SIGKILL the head, a middle and the tail in turn under 8 clients; each restarts and rejoins as tail",
          .timeLimit(.minutes(2)), arguments: zip([3, 5], [2, 1]))
    func killedMembersRejoin(nodes: Int, rounds: Int) async throws {
        try await withFaultCluster(nodes: nodes, name: "kill-\(nodes)") { cluster in
            let load = try await Workload.start(cluster)
            for _ in 0..<rounds {
                for role in [ChainRole.head, .middle, .tail] {
                    try await cluster.killAndRestart(role, load: load)
                }
            }
            try await cluster.verify(load)
        }
    }

    /// With 3 clients the head comes back less than 256 records behind and the master appends
    /// it at once (its first heartbeat may report only a durable prefix of its log); with 8 it
    /// is further behind and catches up from the tail first.
    @Test("SIGSTOP the head with writes queued at it, past the timeout: it is replaced, none of its writes is acknowledged outside the new chain, it rejoins as tail",
          .timeLimit(.minutes(1)), arguments: [3, 8])
    func pausedHeadRejoins(clients: Int) async throws {
        try await pauseAndResume(.head, clients: clients)
    }

    @Test("SIGSTOP the tail under reads and writes, past the timeout: no stale read, it rejoins as tail",
          .timeLimit(.minutes(1)))
    func pausedTailRejoins() async throws {
        try await pauseAndResume(.tail, clients: 8)
    }

    /// The head's log runs ahead of the rest of the chain (its middle and tail are paused), a
    /// reconfiguration starts an epoch at the head's log end, and the head dies: the tail, the
    /// new head, has a shorter log than where that epoch started. It must still take writes
    /// (the records after its log's end never committed); the dead head's are truncated.
    @Test("SIGKILL the head right after a new epoch began above what the rest of the chain holds: the chain goes on",
          .timeLimit(.minutes(1)))
    func headKilledAheadOfItsChain() async throws {
        try await withFaultCluster(nodes: 3, name: "head-ahead", timeoutMilliseconds: 1000) { cluster in
            let load = try await Workload.start(cluster)
            try await load.waitForProgress("the clients got going")
            let (head, middle, tail) = try await (cluster.member(at: .head), cluster.member(at: .middle), cluster.member(at: .tail))
            // The middle stops taking records; the tail stops a little later, before the master
            // declares the middle failed, so the head cannot pass its records on to it either.
            cluster.processes.signal(middle, SIGSTOP)
            try await Task.sleep(for: cluster.failureTimeout * 0.4)
            cluster.processes.signal(tail, SIGSTOP)
            try await cluster.waitUntil("the master removed the paused \(middle)") { $0.role(of: middle) == nil }
            try await Task.sleep(for: .milliseconds(100))  // the head reports where the new epoch starts
            cluster.processes.signal(head, SIGKILL)
            cluster.processes.signal(tail, SIGCONT)
            cluster.processes.signal(middle, SIGCONT)
            _ = await cluster.processes.waitForExit(head, timeout: .seconds(5))
            try await cluster.waitUntil("the master removed the killed \(head)") { $0.role(of: head) == nil }
            try await load.waitForProgress("writes went on without \(head)")
            try await cluster.processes.restart(head)
            try await cluster.waitUntil("every node is a member again") { s in cluster.nodes.allSatisfy { s.role(of: $0) != nil } }
            try await load.waitForProgress("writes went on with every node back")
            try await cluster.verify(load)
        }
    }

    /// The master itself stops for three failure timeouts while the chain serves 8 clients (whose
    /// operations fail once the leases run out) and heartbeats queue at its socket; resumed, it
    /// must not blame the members for its own silence (DESIGN.md invariant 7).
    @Test("SIGSTOP the master for three failure timeouts under 8 clients: no member is removed, the epoch stays",
          .timeLimit(.minutes(1)))
    func pausedMasterRemovesNobody() async throws {
        try await withFaultCluster(nodes: 3, name: "pause-master") { cluster in
            let load = try await Workload.start(cluster)
            try await load.waitForProgress("the clients got going")
            let before = try await cluster.waitUntil("every node is a healthy member") { $0.everyMemberIsHealthy(cluster.nodes) }
            let paused = ContinuousClock.now
            cluster.processes.signal("master", SIGSTOP)
            try await Task.sleep(until: paused + cluster.failureTimeout * 3, clock: .continuous)
            cluster.processes.signal("master", SIGCONT)
            // Long enough for the queued heartbeats, the ticks after them, and a failure timeout
            // from the resume: any removal the pause caused would have been made by then.
            try await Task.sleep(for: cluster.failureTimeout * 3)
            let after = try await cluster.waitUntil("every node is a healthy member again") { $0.everyMemberIsHealthy(cluster.nodes) }
            #expect(after.epoch == before.epoch, "the master reconfigured after its own pause: \(describe(before)) -> \(describe(after))")
            #expect(after.nodes.map(\.id) == before.nodes.map(\.id) && after.nodes.map(\.role) == before.nodes.map(\.role))
            try await load.waitForProgress("writes went on after the master's pause")
            try await cluster.verify(load)
        }
    }

    /// Pauses the member at `role` under load for three failure timeouts, then resumes it.
    private func pauseAndResume(_ role: ChainRole, clients: Int) async throws {
        try await withFaultCluster(nodes: 3, name: "pause-\(role)-\(clients)") { cluster in
            let load = try await Workload.start(cluster, count: clients)
            try await load.waitForProgress("the clients got going")
            let victim = try await cluster.member(at: role)
            let paused = ContinuousClock.now
            cluster.processes.signal(victim, SIGSTOP)
            try await cluster.waitUntil("the master removed the paused \(role) \(victim)") { $0.role(of: victim) == nil }
            try await load.waitForProgress("writes went on without \(victim)")
            try await Task.sleep(until: paused + cluster.failureTimeout * 3, clock: .continuous)
            cluster.processes.signal(victim, SIGCONT)
            let back = try await cluster.waitUntil("\(victim) is a member again") { $0.role(of: victim) != nil }
            #expect(back.role(of: victim) == .tail, "\(victim) came back as \(String(describing: back.role(of: victim))), not as tail")
            try await load.waitForProgress("writes went on with \(victim) back")
            try await cluster.verify(load)
        }
    }
}

// MARK: - The cluster under test

/// A cluster of `catena` processes with a short failure timeout, and what the tests do to it.
final class FaultCluster {
    let directory: ScratchDirectory
    let processes: LocalCluster
    let admin: ChainAdmin
    /// Every node of the topology.
    let nodes: [String]
    let failureTimeout: Duration

    init(directory: ScratchDirectory, processes: LocalCluster, nodes: [String], failureTimeout: Duration) throws {
        self.directory = directory
        self.processes = processes
        self.admin = try ChainAdmin(masters: [processes.masterAddress.description], clusterID: ScratchDirectory.clusterID,
                                    timeout: .seconds(2))
        self.nodes = nodes
        self.failureTimeout = failureTimeout
    }

    /// Polls the master's status every 50 ms until `condition` holds (20 s at most); returns
    /// that status.
    @discardableResult
    func waitUntil(_ what: String, timeout: Duration = .seconds(20),
                   _ condition: (ChainStatus) -> Bool) async throws -> ChainStatus {
        let deadline = ContinuousClock.now + timeout
        var last: ChainStatus?
        while ContinuousClock.now < deadline {
            if let status = try? await admin.status() {
                if condition(status) { return status }
                last = status
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CatenaError(.timeout, "timed out waiting until \(what); last status: \(last.map(describe) ?? "none")")
    }

    /// The node at `role` now (the first, for a middle).
    func member(at role: ChainRole) async throws -> String {
        let status = try await waitUntil("the chain has a \(role)") { $0.member(at: role) != nil }
        return status.member(at: role)!
    }

    /// SIGKILLs the member at `role`; once the master removed it and writes went on without it,
    /// restarts it on its data directory and waits until it is a member again — as the tail.
    func killAndRestart(_ role: ChainRole, load: Workload) async throws {
        let victim = try await member(at: role)
        processes.signal(victim, SIGKILL)
        try #require(await processes.waitForExit(victim, timeout: .seconds(5)) != nil, "\(victim) did not die")
        try await waitUntil("the master removed the killed \(role) \(victim)") { $0.role(of: victim) == nil }
        try await load.waitForProgress("writes went on without \(victim)")
        try await processes.restart(victim)
        let back = try await waitUntil("the restarted \(victim) is a member again") { $0.role(of: victim) != nil }
        #expect(back.role(of: victim) == .tail, "\(victim) came back as \(String(describing: back.role(of: victim))), not as tail")
        try await load.waitForProgress("writes went on with \(victim) back")
    }

    /// Stops the load, waits until the chain has settled, reads every key once more, stops the
    /// cluster and checks the invariants: a linearizable history, no acknowledged write lost,
    /// identical replicas.
    func verify(_ load: Workload) async throws {
        await load.stop()
        let settled = try await waitUntil("every node is a healthy member and all report the same highest LSN") {
            $0.hasSettled(members: nodes)
        }
        let finals = try await load.readEveryKey(masters: [processes.masterAddress.description])
        let history = load.recorder.history
        print("fault injection: \(load.summary(history)); settled at epoch \(settled.epoch), \(describe(settled))")
        expectLinearizable(history)
        let acknowledged = load.acknowledged
        #expect(Set(acknowledged.map(\.lsn)).count == acknowledged.count, "an LSN was acknowledged twice")
        for key in Workload.keys {
            expectFinalRead(finals[key], of: key, acknowledged: acknowledged.filter { $0.key == key }, history: history)
        }
        await processes.stop()
        try await expectIdenticalReplicas(acknowledged: acknowledged)
    }

    /// The final read of `key` is at or after its latest acknowledged write (by LSN), and is the
    /// value of a put that may have happened (acknowledged or of unknown outcome).
    private func expectFinalRead(_ final: Workload.FinalRead?, of key: String, acknowledged: [Workload.Acknowledged],
                                 history: [RegisterOperation]) {
        guard let latest = acknowledged.max(by: { $0.lsn < $1.lsn }) else { return }
        guard let final else {
            Issue.record("\(key): acknowledged writes lost, the key is absent; the latest was at \(latest.lsn)")
            return
        }
        #expect(final.lsn >= latest.lsn, "\(key): the final read is at \(final.lsn), before the acknowledged write at \(latest.lsn)")
        if final.lsn == latest.lsn {
            #expect(final.bytes == latest.value, "\(key): the final read at \(latest.lsn) is not the value acknowledged there")
        }
        let written = history.contains { op in
            op.key == Array(key.utf8) && op.outcome != .failed && op.kind == .put(final.bytes)
        }
        #expect(written, "\(key): the final read returned a value no put wrote: \(String(decoding: final.bytes, as: UTF8.self))")
    }

    /// Every replica's log (LSN, key, content checksum of each record) and objects are the same,
    /// and every acknowledged write is in the logs. Opens the stores, so the cluster must be stopped.
    private func expectIdenticalReplicas(acknowledged: [Workload.Acknowledged]) async throws {
        var logs: [String: [LogEntry]] = [:]
        var objects: [String: [String: ObjectInfo]] = [:]
        for node in nodes {
            let store = try await directory.openStore(of: node)
            logs[node] = try await store.records(after: .zero).collect().map {
                LogEntry(lsn: $0.lsn, key: $0.key.string, checksum: $0.header.contentChecksum)
            }
            objects[node] = try objectsByKey(store)
            await store.close()
        }
        let first = nodes[0]
        for node in nodes.dropFirst() {
            let (a, b) = (logs[first]!, logs[node]!)
            if let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) ?? (a.count == b.count ? nil : min(a.count, b.count)) {
                Issue.record("""
                    the logs of \(first) (\(a.count) records) and \(node) (\(b.count)) differ from record \(i): \
                    \(a.dropFirst(i).prefix(3).map(\.description)) vs \(b.dropFirst(i).prefix(3).map(\.description))
                    """)
            }
            #expect(objects[node]!.mapValues(ObjectVersion.init) == objects[first]!.mapValues(ObjectVersion.init),
                    "the objects of \(first) and \(node) differ")
        }
        for node in nodes {
            let log = Set(logs[node]!)
            let missing = acknowledged.filter { !log.contains(LogEntry(lsn: $0.lsn, key: $0.key, checksum: $0.contentChecksum)) }
            #expect(missing.isEmpty, "\(node) lacks \(missing.count) acknowledged writes, e.g. \(missing.prefix(3).map { "\($0.key) at \($0.lsn)" })")
        }
    }

    /// What two replicas must agree on about an object.
    private struct ObjectVersion: Equatable {
        var lsn: LSN, size: UInt64, checksum: UInt64
        init(_ info: ObjectInfo) { (lsn, size, checksum) = (info.lsn, info.size, info.contentChecksum) }
    }

    /// One record of a log, as replicas must agree on it.
    private struct LogEntry: Hashable, CustomStringConvertible {
        var lsn: LSN, key: String, checksum: UInt64
        var description: String { "\(lsn) \(key) \(String(checksum, radix: 16))" }
    }

    /// Continues paused children and stops every child by its PID.
    func shutDown() async {
        for child in processes.children { kill(child.pid, SIGCONT) }
        await processes.stop()
    }
}

/// Starts a cluster of `nodes` nodes (failure timeout 500 ms unless given), waits until every node is a healthy member,
/// runs `body`, and stops every process and removes the directory however `body` ends.
func withFaultCluster(nodes: Int, name: String, timeoutMilliseconds timeout: Int = 500,
                      _ body: (FaultCluster) async throws -> Void) async throws {
    let directory = try ScratchDirectory()
    var logLevel = "warning"
    var logFile: FileHandle?
    if let dir = ProcessInfo.processInfo.environment["CATENA_TEST_LOG_DIR"] {
        let path = dir + "/\(name).log"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        logFile = FileHandle(forWritingAtPath: path)
        logLevel = "info"
    }
    defer { try? logFile?.close() }
    // Nodes raise their commit watermark every 30 ms (5 s by default), so every failure here
    // also checks that no node ever has to truncate below it.
    let processes = try await startCluster(try directory.writeTopology(nodes: nodes, timeoutMilliseconds: timeout),
                                           logLevel: logLevel, stderr: logFile, nodeArguments: ["--watermark-interval-ms", "30"])
    let cluster: FaultCluster
    do {
        cluster = try FaultCluster(directory: directory, processes: processes, nodes: (1...nodes).map { "n\($0)" },
                                   failureTimeout: .milliseconds(timeout))
    } catch {
        await processes.stop()
        throw error
    }
    do {
        try await cluster.waitUntil("every node is a healthy member") { $0.hasSettled(members: cluster.nodes) }
        try await body(cluster)
    } catch {
        await cluster.shutDown()
        throw error
    }
    await cluster.shutDown()
}

/// Records a failure naming the first key whose history is not linearizable, with that history.
func expectLinearizable(_ history: [RegisterOperation], sourceLocation: SourceLocation = #_sourceLocation) {
    func historyOf(_ key: String) -> String {
        history.filter { $0.key == Array(key.utf8) }.sorted { $0.invoke < $1.invoke }.map(\.description).joined(separator: "\n")
    }
    switch LinearizabilityChecker.check(history) {
    case .linearizable:
        break
    case .notLinearizable(let key, let explanation):
        Issue.record("\(key) is not linearizable: \(explanation)\nIts history:\n\(historyOf(key))", sourceLocation: sourceLocation)
    case .gaveUp(let key):
        Issue.record("the linearizability checker gave up on \(key)", sourceLocation: sourceLocation)
    }
}

extension ChainStatus {
    /// The role of `node` (nil: not a member).
    func role(of node: String) -> ChainRole? { nodes.first { $0.id.rawValue == node }?.role }

    /// The first member at `role`.
    func member(at role: ChainRole) -> String? { nodes.first { $0.role == role }?.id.rawValue }

    /// Whether every one of `members` is a member and healthy (their LSNs may differ: writes flow).
    func everyMemberIsHealthy(_ members: [String]) -> Bool {
        members.allSatisfy { m in nodes.contains { $0.id.rawValue == m && $0.role != nil && $0.health == .healthy } }
    }

    /// Whether every one of `members` is a healthy member, nothing else is known, and all report
    /// the same highest LSN.
    func hasSettled(members: [String]) -> Bool {
        Set(nodes.map(\.id.rawValue)) == Set(members) && nodes.allSatisfy { $0.role != nil && $0.health == .healthy }
            && Set(nodes.map(\.highestLSN)).count == 1 && !nodes.contains { $0.address.hasSuffix(":0") }
    }
}

/// `epoch 4: n2 head healthy 3.120, …`
func describe(_ status: ChainStatus) -> String {
    "epoch \(status.epoch): " + status.nodes.map { n in
        "\(n.id) \(n.role.map { "\($0)" } ?? "standby") \(n.health) \(n.highestLSN)"
    }.joined(separator: ", ")
}

// MARK: - The clients

/// Eight clients (one `CatenaClient` each) putting unique values to and getting 20 keys, as fast
/// as they can, until stopped; every operation is recorded in a `HistoryRecorder`, and each
/// acknowledged put with its LSN.
///
/// Outcomes: an acknowledged put is ok; a put refused as invalid is failed (no effect); any other
/// error (timeout, unavailable at the deadline) leaves it unknown — it may apply, even later. A
/// get is ok with the value or, for not found, absent; a failed get observed nothing (unknown).
final class Workload: Sendable {
    struct Acknowledged: Sendable {
        var key: String
        var value: [UInt8]
        var lsn: LSN
        var contentChecksum: UInt64
    }

    /// What the final read of a key returned.
    struct FinalRead: Sendable {
        var lsn: LSN
        var bytes: [UInt8]
    }

    static let keys = (0..<20).map { "key-\($0)" }
    let recorder = HistoryRecorder()
    private let clients: [CatenaClient]
    private let state = Mutex(State())

    private struct State {
        var acknowledged: [Acknowledged] = []
        var stopping = false
        var task: Task<Void, Never>?
    }

    private init(clients: [CatenaClient]) {
        self.clients = clients
    }

    /// Connects `count` clients (attempts time out after 1 s, operations after 4 s) and starts them.
    static func start(_ cluster: FaultCluster, count: Int = 8) async throws -> Workload {
        var configuration = CatenaClient.Configuration()
        configuration.clusterID = ScratchDirectory.clusterID
        configuration.attemptTimeout = .seconds(1)
        configuration.requestTimeout = .seconds(4)
        var clients: [CatenaClient] = []
        for _ in 0..<count {
            clients.append(try await CatenaClient(masters: [cluster.processes.masterAddress.description], configuration: configuration))
        }
        let load = Workload(clients: clients)
        let task = Task {
            await withTaskGroup(of: Void.self) { group in
                for (process, client) in clients.enumerated() {
                    group.addTask { await load.run(process: process, client: client) }
                }
            }
        }
        load.state.withLock { $0.task = task }
        return load
    }

    /// Acknowledged puts so far.
    var acknowledged: [Acknowledged] { state.withLock { $0.acknowledged } }

    /// Waits until `writes` more puts are acknowledged (10 s at most).
    func waitForProgress(_ what: String, writes: Int = 20) async throws {
        let target = state.withLock { $0.acknowledged.count } + writes
        let deadline = ContinuousClock.now + .seconds(10)
        while state.withLock({ $0.acknowledged.count }) < target {
            guard ContinuousClock.now < deadline else {
                throw CatenaError(.timeout, "timed out waiting until \(what): fewer than \(writes) puts acknowledged in 10 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Stops the clients: each finishes its operation in progress.
    func stop() async {
        let task = state.withLock { s in
            s.stopping = true
            return s.task
        }
        await task?.value
        for client in clients { await client.close() }
    }

    /// Gets every key once with a fresh client, recorded (as one more process); the objects
    /// found, by key. A get that fails is a test failure.
    func readEveryKey(masters: [String]) async throws -> [String: FinalRead] {
        var configuration = CatenaClient.Configuration()
        configuration.clusterID = ScratchDirectory.clusterID
        let client = try await CatenaClient(masters: masters, configuration: configuration)
        var objects: [String: FinalRead] = [:]
        for key in Self.keys {
            switch await get(key, process: clients.count, client: client) {
            case .some(let object): objects[key] = object
            case .none: Issue.record("the final read of \(key) failed")
            }
        }
        await client.close()
        return objects
    }

    /// `12034 operations (5021 puts acknowledged, 3 unknown, 0 failed; 6010 gets answered)`
    func summary(_ history: [RegisterOperation]) -> String {
        let puts = history.filter { $0.kind != .get }
        func count(_ ops: [RegisterOperation], _ outcome: RegisterOperation.Outcome) -> Int { ops.count { $0.outcome == outcome } }
        return "\(history.count) operations (\(count(puts, .ok)) puts acknowledged, \(count(puts, .unknown)) unknown, "
            + "\(count(puts, .failed)) failed; \(count(history.filter { $0.kind == .get }, .ok)) gets answered)"
    }

    private func run(process: Int, client: CatenaClient) async {
        var random = SplitMix64(seed: UInt64(process) &+ 0x5EED)
        var i = 0
        while !state.withLock({ $0.stopping }) {
            let key = Self.keys[Int(random.next() % UInt64(Self.keys.count))]
            if random.next() % 2 == 0 {
                await put(key, Array("c\(process)-\(i)".utf8), process: process, client: client)
            } else {
                _ = await get(key, process: process, client: client)
            }
            i += 1
        }
    }

    private func put(_ key: String, _ value: [UInt8], process: Int, client: CatenaClient) async {
        let id = recorder.invoke(process: process, key: key, kind: .put(value))
        do {
            let receipt = try await client.put(key, value)
            recorder.complete(id, outcome: .ok)
            state.withLock {
                $0.acknowledged.append(Acknowledged(key: key, value: value, lsn: receipt.lsn, contentChecksum: receipt.contentChecksum))
            }
        } catch {
            recorder.complete(id, outcome: error.code == .invalidArgument ? .failed : .unknown)
        }
    }

    /// The object read, `.some(nil)` for not found, nil if the get failed.
    private func get(_ key: String, process: Int, client: CatenaClient) async -> FinalRead?? {
        let id = recorder.invoke(process: process, key: key, kind: .get)
        do {
            let object = try await client.get(key)
            recorder.complete(id, outcome: .ok, observed: object.bytes)
            return .some(FinalRead(lsn: object.info.lsn, bytes: object.bytes))
        } catch where error.code == .notFound {
            recorder.complete(id, outcome: .ok, observed: nil)
            return .some(nil)
        } catch {
            recorder.complete(id, outcome: .unknown)
            return nil
        }
    }
}
