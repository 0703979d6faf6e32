import CatenaClient
import CatenaCore
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Foundation
import Synchronization
import Testing

/// Clients (one `CatenaClient` each, eight by default) putting unique values to and getting 20
/// keys of a ``TestCluster``, as fast as they can, until stopped; every operation is recorded in a
/// `HistoryRecorder`, and each acknowledged put with its LSN. ``TestCluster/verify(_:members:standbys:)``
/// checks what they saw.
///
/// Outcomes: an acknowledged put is ok; a put refused as invalid is failed (no effect); any other
/// error (timeout, unavailable at the deadline) leaves it unknown — it may apply, even later. A
/// get is ok with the value or, for not found, absent; a failed get observed nothing (unknown).
public final class Workload: Sendable {
    /// An acknowledged put.
    public struct Acknowledged: Sendable {
        /// Its key.
        public var key: String
        /// The value put.
        public var value: [UInt8]
        /// The LSN the chain acknowledged it at.
        public var lsn: LSN
        /// The value's content checksum.
        public var contentChecksum: UInt64
    }

    /// What the final read of a key returned.
    public struct FinalRead: Sendable {
        /// The object's LSN.
        public var lsn: LSN
        /// Its bytes.
        public var bytes: [UInt8]
    }

    /// The keys the clients use.
    public static let keys = (0..<20).map { "key-\($0)" }
    /// Every operation of every client.
    public let recorder = HistoryRecorder()
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

    /// Connects `count` clients to `cluster` (attempts time out after 1 s, operations after 4 s)
    /// and starts them. They run until ``stop()``, or until the cluster stops. Every fourth
    /// client reads in mode `tail` (the tail only), the others in the default `linearizable`
    /// (every member, CRAQ): the history checks both.
    public static func start(_ cluster: TestCluster, count: Int = 8) async throws -> Workload {
        var configuration = CatenaClient.Configuration()
        configuration.clusterID = TestCluster.clusterID
        configuration.attemptTimeout = .seconds(1)
        configuration.requestTimeout = .seconds(4)
        var clients: [CatenaClient] = []
        for i in 0..<count {
            configuration.readMode = i % 4 == 3 ? .tail : .linearizable
            clients.append(try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: testLogger))
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
        cluster.adopt(load)
        return load
    }

    /// Acknowledged puts so far.
    public var acknowledged: [Acknowledged] { state.withLock { $0.acknowledged } }

    /// Waits until `writes` more puts are acknowledged (10 s at most).
    public func waitForProgress(_ what: String, writes: Int = 20) async throws {
        let target = state.withLock { $0.acknowledged.count } + writes
        let deadline = ContinuousClock.now + .seconds(10)
        while state.withLock({ $0.acknowledged.count }) < target {
            guard ContinuousClock.now < deadline else {
                throw HarnessError(description: "timed out waiting until \(what): fewer than \(writes) puts acknowledged in 10 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Stops the clients: each finishes its operation in progress.
    public func stop() async {
        let task = state.withLock { s in
            s.stopping = true
            return s.task
        }
        await task?.value
        for client in clients { await client.close() }
    }

    /// Gets every key once with a fresh client, recorded (as one more process); the objects
    /// found, by key. A get that fails is a test failure.
    public func readEveryKey(_ cluster: TestCluster) async throws -> [String: FinalRead] {
        var configuration = CatenaClient.Configuration()
        configuration.clusterID = TestCluster.clusterID
        let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: testLogger)
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
    public func summary(_ history: [RegisterOperation]) -> String {
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

extension TestCluster {
    /// Stops `load`, waits until the chain has settled — exactly `members` (default: every node
    /// of the initial chain) are healthy members reporting the same highest LSN, and every other
    /// node the master knows is one of `standbys` — reads every key once more, stops every node
    /// and the master (``shutDown()``), and checks, recording failures in the running test:
    /// - the history is linearizable per key;
    /// - no LSN was acknowledged twice;
    /// - the final read of each key is at or after its latest acknowledged put, and is the value
    ///   of a put that may have happened;
    /// - every member's log holds every acknowledged put (LSN, key, checksum), and the members'
    ///   logs and objects are identical.
    public func verify(_ load: Workload, members: [NodeID]? = nil, standbys: [NodeID] = [],
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let members = members ?? nodeIDs
        await load.stop()
        let settled = try await waitForStatus("the members \(members) are healthy and all report the same highest LSN") {
            $0.hasSettled(members: members, standbys: standbys)
        }
        let finals = try await load.readEveryKey(self)
        let history = load.recorder.history
        print("workload (\(backend)): \(load.summary(history)); settled at epoch \(settled.epoch), \(settled.summary)")
        await expectLinearizable(history, sourceLocation: sourceLocation)
        let acknowledged = load.acknowledged
        #expect(Set(acknowledged.map(\.lsn)).count == acknowledged.count, "an LSN was acknowledged twice", sourceLocation: sourceLocation)
        for key in Workload.keys {
            expectFinalRead(finals[key], of: key, acknowledged: acknowledged.filter { $0.key == key }, history: history,
                            sourceLocation: sourceLocation)
        }
        await shutDown()
        try await expectIdenticalReplicas(members, acknowledged: acknowledged, sourceLocation: sourceLocation)
    }

    /// The final read of `key` is at or after its latest acknowledged write (by LSN), and is the
    /// value of a put that may have happened (acknowledged or of unknown outcome).
    private func expectFinalRead(_ final: Workload.FinalRead?, of key: String, acknowledged: [Workload.Acknowledged],
                                 history: [RegisterOperation], sourceLocation: SourceLocation) {
        guard let latest = acknowledged.max(by: { $0.lsn < $1.lsn }) else { return }
        guard let final else {
            Issue.record("\(key): acknowledged writes lost, the key is absent; the latest was at \(latest.lsn)", sourceLocation: sourceLocation)
            return
        }
        #expect(final.lsn >= latest.lsn, "\(key): the final read is at \(final.lsn), before the acknowledged write at \(latest.lsn)",
                sourceLocation: sourceLocation)
        if final.lsn == latest.lsn {
            #expect(final.bytes == latest.value, "\(key): the final read at \(latest.lsn) is not the value acknowledged there",
                    sourceLocation: sourceLocation)
        }
        let written = history.contains { op in
            op.key == Array(key.utf8) && op.outcome != .failed && op.kind == .put(final.bytes)
        }
        #expect(written, "\(key): the final read returned a value no put wrote: \(String(decoding: final.bytes, as: UTF8.self))",
                sourceLocation: sourceLocation)
    }

    /// Every member's log (LSN, key, content checksum of each record) and objects are the same,
    /// and every acknowledged write is in the logs. Opens the stores: the nodes must be stopped.
    private func expectIdenticalReplicas(_ members: [NodeID], acknowledged: [Workload.Acknowledged],
                                         sourceLocation: SourceLocation) async throws {
        var logs: [NodeID: [LogEntry]] = [:]
        var objects: [NodeID: [Key: ObjectInfo]] = [:]
        for node in members {
            logs[node] = try await log(of: node)
            objects[node] = try await contents(of: node)
        }
        let first = members[0]
        for node in members.dropFirst() {
            let (a, b) = (logs[first]!, logs[node]!)
            if let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) ?? (a.count == b.count ? nil : min(a.count, b.count)) {
                Issue.record("""
                    the logs of \(first) (\(a.count) records) and \(node) (\(b.count)) differ from record \(i): \
                    \(a.dropFirst(i).prefix(3).map(\.description)) vs \(b.dropFirst(i).prefix(3).map(\.description))
                    """, sourceLocation: sourceLocation)
            }
            #expect(objects[node]!.mapValues(ObjectVersion.init) == objects[first]!.mapValues(ObjectVersion.init),
                    "the objects of \(first) and \(node) differ", sourceLocation: sourceLocation)
        }
        for node in members {
            let log = Set(logs[node]!)
            let missing = acknowledged.filter { !log.contains(LogEntry(lsn: $0.lsn, key: $0.key, checksum: $0.contentChecksum)) }
            #expect(missing.isEmpty, "\(node) lacks \(missing.count) acknowledged writes, e.g. \(missing.prefix(3).map { "\($0.key) at \($0.lsn)" })",
                    sourceLocation: sourceLocation)
        }
    }

    /// What two replicas must agree on about an object.
    private struct ObjectVersion: Equatable {
        var lsn: LSN, size: UInt64, checksum: UInt64
        init(_ info: ObjectInfo) { (lsn, size, checksum) = (info.lsn, info.size, info.contentChecksum) }
    }
}

/// Records a failure naming the first key whose history is not linearizable, with that history.
/// The search runs on a thread of its own: it can take seconds, and the cluster's tasks share the
/// cooperative pool (one thread on a one-core machine).
public func expectLinearizable(_ history: [RegisterOperation], sourceLocation: SourceLocation = #_sourceLocation) async {
    func historyOf(_ key: String) -> String {
        history.filter { $0.key == Array(key.utf8) }.sorted { $0.invoke < $1.invoke }.map(\.description).joined(separator: "\n")
    }
    let verdict = await offThread { LinearizabilityChecker.check(history) }
    switch verdict {
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
    public func role(of node: NodeID) -> ChainRole? { nodes.first { $0.id == node }?.role }

    /// The first member at `role`.
    public func member(at role: ChainRole) -> NodeID? { nodes.first { $0.role == role }?.id }

    /// The entry of `node`, if the master knows it.
    public func node(_ id: NodeID) -> ChainStatus.Node? { nodes.first { $0.id == id } }

    /// Whether every one of `members` is a member and healthy (their LSNs may differ: writes flow).
    public func everyMemberIsHealthy(_ members: [NodeID]) -> Bool {
        members.allSatisfy { m in nodes.contains { $0.id == m && $0.role != nil && $0.health == .healthy } }
    }

    /// Whether the nodes the master knows are exactly `members` and `standbys`, every one of
    /// `members` is a healthy member with a registered address, no standby is a member, and the
    /// members all report the same highest LSN.
    public func hasSettled(members: [NodeID], standbys: [NodeID] = []) -> Bool {
        let memberEntries = nodes.filter { members.contains($0.id) }
        return Set(nodes.map(\.id)) == Set(members + standbys) && memberEntries.count == members.count
            && memberEntries.allSatisfy { $0.role != nil && $0.health == .healthy && !$0.address.hasSuffix(":0") }
            && nodes.allSatisfy { members.contains($0.id) || $0.role == nil }
            && Set(memberEntries.map(\.highestLSN)).count == 1
    }

    /// `epoch 4: n2 head healthy 3.120, …`
    public var summary: String {
        "epoch \(epoch): " + nodes.map { n in
            "\(n.id) \(n.role.map { "\($0)" } ?? "standby") \(n.health) \(n.highestLSN)\(n.reason.map { " (\($0))" } ?? "")"
        }.joined(separator: ", ")
    }
}
