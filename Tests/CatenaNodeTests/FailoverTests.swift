import CatenaClient
import CatenaCluster
import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Foundation
import Synchronization
import Testing

/// Writers that keep putting `key-<writer>-<i>` until stopped, counting acknowledgements in
/// `progress`; returns the last acknowledged value of each key.
private func writers(_ client: CatenaClient, count: Int, progress: Counter,
                     until stop: @escaping @Sendable () -> Bool) async -> [String: [UInt8]] {
    await withTaskGroup(of: [String: [UInt8]].self) { group in
        for w in 0..<count {
            group.addTask {
                var acknowledged: [String: [UInt8]] = [:]
                var i = 0
                while !stop() {
                    let key = "key-\(w)-\(i % 50)"
                    let value = Array("value \(w) \(i)".utf8)
                    if (try? await client.put(key, value)) != nil {
                        acknowledged[key] = value
                        progress.increment()
                    }
                    i += 1
                }
                return acknowledged
            }
        }
        var all: [String: [UInt8]] = [:]
        for await part in group { all.merge(part) { $1 } }
        return all
    }
}

/// The master's state file, whose compare-and-swaps fail while `failing` is above zero (each
/// failure counts it down): a consensus store that is briefly unreachable.
private final class FlakyStateStore: MasterStateStore, @unchecked Sendable {
    let file: MasterStateFile
    private let lock = NSLock()
    private var failing = 0
    private(set) var failures = 0

    init(directory: String) { file = MasterStateFile(directory: directory) }

    var location: String { file.location }

    func failNext(_ n: Int) { lock.withLock { failing = n } }

    func load(clusterID: String, chainID: ChainID) throws(CatenaError) -> MasterState? {
        try file.load(clusterID: clusterID, chainID: chainID)
    }

    func compareAndSwap(expectedEpoch: UInt64?, new: MasterState) throws(CatenaError) {
        let fail: Bool = lock.withLock {
            guard failing > 0 else { return false }
            failing -= 1
            failures += 1
            return true
        }
        if fail { throw CatenaError(.ioFailure, "injected: the state store is unreachable") }
        try file.compareAndSwap(expectedEpoch: expectedEpoch, new: new)
    }
}

/// Where a cluster's master configuration leaves the state store it made.
private final class StoreSlot: Sendable {
    let store = Mutex<FlakyStateStore?>(nil)
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func increment() { lock.withLock { value += 1 } }
    var count: Int { lock.withLock { value } }
}

private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

extension InProcessChainTests {
    @Suite("Failures and reconfiguration (in process)")
    struct FailoverTests {
        /// A cluster of `nodes` nodes and a master with the failure timeout `timeout`, nodes
        /// heartbeating every 50 ms with small segments and a busy compaction scheduler, a client
        /// that retries for 20 s. `manualClock`: the nodes count their leases on the cluster's
        /// manual clock.
        static func options(nodes: Int = 3, timeout: Duration = .seconds(1), manualClock: Bool = false) -> TestCluster.Options {
            var options = TestCluster.Options(nodes: nodes) { _, configuration in
                // Small segments, so compaction has sealed segments to work on, and no request-id
                // window, so it drops what the watermark allows (the records are seconds old).
                configuration.store.segmentSize = 64 << 10
                configuration.store.requestWindow = .zero
                // The watermark follows the chain closely (a rejoining node must discard a log whose
                // watermark it persisted).
                configuration.compaction.interval = .milliseconds(20)
                configuration.compaction.watermarkInterval = .milliseconds(50)
            }
            options.heartbeatInterval = .milliseconds(50)
            options.failureTimeout = timeout
            options.client.attemptTimeout = .milliseconds(500)
            options.client.requestTimeout = .seconds(20)
            options.manualClock = manualClock
            return options
        }

        @Test("Each role fails in turn under writers: the chain reconfigures, no acknowledged write is lost, the node rejoins as tail with an identical log",
              arguments: ["n1", "n2", "n3"])
        func aFailedMemberIsReplacedAndRejoins(_ victim: String) async throws {
            try await withTestCluster(Self.options()) { cluster in
                let id = try NodeID(victim)
                let stop = Flag()
                let acknowledgements = Counter()
                let load = Task { await writers(cluster.client, count: 4, progress: acknowledgements, until: { stop.isSet }) }
                defer { stop.set() }  // the writers stop however the test ends
                try await Task.sleep(for: .milliseconds(200))
                let before = await cluster.master.configuration.epoch
                await cluster.stopNode(id)
                try await cluster.waitFor("the master removed \(victim)") {
                    await cluster.master.configuration.role(of: id) == nil
                }
                let removedAt = await cluster.master.configuration
                #expect(removedAt.epoch > before)
                #expect(removedAt.members.count == 2)
                // Writes go on without it.
                let atRemoval = acknowledgements.count
                try await cluster.waitFor("writes are acknowledged without \(victim)") { acknowledgements.count > atRemoval + 20 }
                try await cluster.startNode(id)
                try await cluster.waitFor("\(victim) rejoined as tail") {
                    await cluster.master.configuration.tail?.id == id
                }
                try await Task.sleep(for: .milliseconds(200))
                stop.set()
                let acknowledged = await load.value
                for (key, value) in acknowledged {
                    let object = try await cluster.client.get(key)
                    #expect(object.bytes == value, "\(key): the last acknowledged value")
                }
                // Every member holds the same log once the tail has everything.
                let members = await cluster.master.configuration.members.map(\.id)
                try await cluster.waitFor("the replicas' logs agree") {
                    var logs: [[TestCluster.LogEntry]?] = []
                    for m in members { logs.append(try? await cluster.log(of: m)) }
                    return logs.allSatisfy { $0 != nil && $0 == logs[0] }
                }
                let status = try await cluster.admin.status()
                #expect(status.nodes.map(\.id) == members)
                #expect(status.nodes.allSatisfy { $0.health == .healthy })
            }
        }

        @Test("add-node copies the log into a new node and appends it as tail; remove-node reconfigures first, then the node stops")
        func addAndRemoveNode() async throws {
            try await withTestCluster(Self.options(nodes: 2)) { cluster in
                for i in 0..<200 { _ = try await cluster.client.put("pre-\(i)", pseudoRandomBytes(2000, seed: UInt64(i))) }
                let n3 = try NodeID("n3")
                try await cluster.startNode(n3)
                try await Task.sleep(for: .milliseconds(100))
                #expect(await cluster.master.configuration.role(of: n3) == nil, "an id the master does not know waits")
                let address = try #require(cluster.node(n3)).address.description
                _ = try await cluster.admin.addNode(n3, address: address)
                try await cluster.waitFor("n3 was appended") { await cluster.master.configuration.tail?.id == n3 }
                _ = try await cluster.client.put("after", [1, 2, 3])
                #expect(try await cluster.client.get("pre-7").bytes == pseudoRandomBytes(2000, seed: 7))
                #expect(try await cluster.client.get("after").bytes == [1, 2, 3])
                // The write may have committed before n2 ran the configuration with n3 (n2 the tail
                // then); n2 passes it on after.
                let n1 = try NodeID("n1")
                try await cluster.waitFor("n3 holds the same log as n1") {
                    let copied = (try? await cluster.log(of: n3)) ?? []
                    let original = (try? await cluster.log(of: n1)) ?? []
                    return !copied.isEmpty && copied == original
                }

                await #expect(throws: CatenaError.self) { _ = try await cluster.admin.removeNode(NodeID("n9")) }
                _ = try await cluster.admin.removeNode(n3)
                try await cluster.waitFor("n3 was removed and stopped") {
                    let removed = await cluster.master.configuration.role(of: n3) == nil
                    let stopped = cluster.hasStopped(n3)
                    return removed && stopped
                }
                _ = try await cluster.client.put("after-removal", [4])
                #expect(try await cluster.client.get("after-removal").bytes == [4])
                let status = try await cluster.admin.status()
                #expect(status.nodes.map(\.id.rawValue) == ["n1", "n2"])
            }
        }

        @Test("A chain that lost every member is unavailable and restarts only from a member the master kept; the others rejoin")
        func everyMemberFails() async throws {
            try await withTestCluster(Self.options()) { cluster in
                for i in 0..<50 { _ = try await cluster.client.put("k\(i)", Array("v\(i)".utf8)) }
                let ids = try ["n1", "n2", "n3"].map { (s) throws(CatenaError) in try NodeID(s) }
                for id in ids { await cluster.stopNode(id) }
                // The master drops failed members one lease after their last heartbeat, but never the last.
                try await cluster.waitFor("the master keeps one member and reports the chain unavailable") {
                    let status = try? await cluster.admin.status()
                    return status?.available == false && status?.nodes.filter { $0.role != nil }.count == 1
                }
                let kept = await cluster.master.configuration.members.map(\.id)
                try #require(kept.count == 1)
                let others = ids.filter { !kept.contains($0) }
                // Members the master dropped come back first: nothing is served, nothing invented.
                for id in others { try await cluster.startNode(id) }
                try await Task.sleep(for: .milliseconds(500))
                #expect(await cluster.master.configuration.members.map(\.id) == kept)
                #expect((try? await cluster.admin.status())?.available == false)
                try await cluster.startNode(kept[0])
                try await cluster.waitFor("all three are members again") { await cluster.master.configuration.members.count == 3 }
                for i in 0..<50 { #expect(try await cluster.client.get("k\(i)").bytes == Array("v\(i)".utf8)) }
                _ = try await cluster.client.put("after", [9])
                #expect(try await cluster.client.get("after").bytes == [9])
            }
        }

        @Test("While the master is down the chain serves until the leases run out; a restarted master keeps the configuration")
        func masterRestart() async throws {
            try await withTestCluster(Self.options(timeout: .seconds(2), manualClock: true)) { cluster in
                _ = try await cluster.client.put("before", [1])
                let before = await cluster.master.configuration
                try await cluster.stopMaster()
                // Within the lease (2 s from the last heartbeat, on the nodes' clock, which stands
                // still), the chain still takes writes.
                _ = try await cluster.client.put("during", [2])
                // The leases run out: at once, the head refuses writes and the tail refuses reads.
                cluster.advanceClocks(by: cluster.failureTimeout + .milliseconds(500))
                let head = try await cluster.rawConnection(to: try #require(cluster.node(before.head!.id)))
                defer { head.close() }
                let request = WriteRequest(requestID: .random(), type: .put, key: try Key("late"), value: [3])
                do {
                    _ = try await head.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(request)), timeout: .seconds(2))
                    Issue.record("a head whose lease ran out took a write")
                } catch {
                    #expect(code(of: error) == .unavailable, "\(error)")
                    #expect("\(error)".contains("lease"), "\(error)")
                }
                let tail = try await cluster.rawConnection(to: try #require(cluster.node(before.tail!.id)))
                defer { tail.close() }
                do {
                    _ = try await tail.request(Frame(type: .get, chainID: 1, epoch: before.epoch, payload: KeyPayload.encode(try Key("during"))),
                                               timeout: .seconds(2))
                    Issue.record("a tail whose lease ran out answered a read")
                } catch {
                    #expect(code(of: error) == .unavailable, "\(error)")
                    #expect("\(error)".contains("lease"), "\(error)")
                }
                try await cluster.restartMaster()
                try await cluster.waitFor("writes resume") { (try? await cluster.client.put("after", [4])) != nil }
                let after = await cluster.master.configuration
                #expect(after.members.map(\.id) == before.members.map(\.id), "the configuration survived the restart")
                #expect(after.epoch >= before.epoch)
                #expect(try await cluster.client.get("during").bytes == [2])
            }
        }

        @Test("A cancelled call to a chain that does not answer ends at once with cancelled, not at its deadline", .timeLimit(.minutes(1)))
        func cancelledCallEndsPromptly() async throws {
            try await withTestCluster(Self.options()) { cluster in
                var configuration = CatenaClient.Configuration()
                configuration.clusterID = TestCluster.clusterID
                configuration.requestTimeout = .seconds(60)
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: configuration, logger: testLogger)
                _ = try await client.put("before", [1])
                try await cluster.stopMaster()
                for id in cluster.nodeIDs { await cluster.stopNode(id) }
                let put = Task { try await client.put("never", [2]) }
                try await Task.sleep(for: .milliseconds(300))  // it retries: nothing answers
                let cancelled = ContinuousClock.now
                put.cancel()
                let outcome = await put.result
                #expect(ContinuousClock.now - cancelled < .seconds(5), "a cancelled call ran on towards its 60 s deadline")
                switch outcome {
                case .success: Issue.record("a put succeeded with no chain to take it")
                case .failure(let error): #expect(code(of: error) == .cancelled, "\(error)")
                }
                await client.close()
            }
        }

        @Test("A reconfiguration the state store refuses is retried, and no node runs an epoch the store does not hold")
        func aFailingStateStoreDelaysButNeverSkipsPersistence() async throws {
            let made = StoreSlot()
            var options = Self.options()
            options.master = { configuration in
                let store = FlakyStateStore(directory: configuration.dataDirectory)
                made.store.withLock { $0 = store }
                configuration.stateStore = store
            }
            try await withTestCluster(options) { cluster in
                let store = try #require(made.store.withLock { $0 })
                _ = try await cluster.client.put("before", [1])
                let before = await cluster.master.configuration
                store.failNext(5)
                await cluster.stopNode(try NodeID("n3"))
                try await cluster.waitFor("the master removed n3 once the store took the change") {
                    await cluster.master.configuration.members.count == 2
                }
                #expect(store.failures == 5, "every refused swap was retried")
                let stored = try #require(try store.file.load())
                let active = await cluster.master.configuration
                #expect(stored.configuration == active, "the active configuration is the stored one")
                #expect(active.epoch > before.epoch)
                for id in active.members.map(\.id) {
                    let running = try #require(cluster.node(id)?.chainConfiguration)
                    #expect(running.epoch <= stored.epoch, "\(id) runs epoch \(running.epoch); the store holds \(stored.epoch)")
                }
                _ = try await cluster.client.put("after", [2])
                #expect(try await cluster.client.get("after").bytes == [2])
            }
        }

        @Test("A member that comes back behind what the tail compacted discards its log and gets a full copy")
        func aRejoinBelowTheCompactedHistoryGetsAFullCopy() async throws {
            try await withTestCluster(Self.options()) { cluster in
                for i in 0..<20 { _ = try await cluster.client.put("k\(i % 5)", pseudoRandomBytes(3000, seed: UInt64(i))) }
                let n3 = try NodeID("n3")
                // n3's scheduler persisted a watermark: the log it must discard to take a full copy has one.
                try await cluster.waitFor("n3 raised its commit watermark") {
                    (cluster.node(n3)?.localStore.commitWatermark.seq ?? 0) >= 20
                }
                await cluster.stopNode(n3)
                try await cluster.waitFor("the master removed n3") { await cluster.master.configuration.role(of: n3) == nil }
                for i in 20..<400 { _ = try await cluster.client.put("k\(i % 5)", pseudoRandomBytes(3000, seed: UInt64(i))) }
                // The tail compacts what every replica holds (its scheduler raises the watermark; the
                // garbage here is below the scheduler's threshold, so the test compacts).
                let tailID = try #require(await cluster.master.configuration.tail?.id)
                let tail = try #require(cluster.node(tailID)).localStore
                try await cluster.waitFor("the tail's watermark reached its log's end") { tail.commitWatermark == tail.highestLSN }
                _ = try await tail.compact()
                #expect(tail.compactedThrough.seq > 20, "compaction dropped history n3 lacks")

                try await cluster.startNode(n3)
                try await cluster.waitFor("n3 rejoined as tail") { await cluster.master.configuration.tail?.id == n3 }
                let copy = try #require(cluster.node(n3)).localStore
                try await cluster.waitFor("n3 holds what the old tail holds") {
                    copy.highestLSN == tail.highestLSN
                }
                #expect(copy.compactedThrough.seq > 0, "n3's log is the thinned copy")
                #expect(try copy.list().objects == (try tail.list().objects))
                for i in 395..<400 { #expect(try await cluster.client.get("k\(i % 5)").bytes == pseudoRandomBytes(3000, seed: UInt64(i))) }
            }
        }

        /// A node whose disk fails (an fsync error) stops taking part — its log is failed — but runs
        /// on and heartbeats, reporting the failure: the master must not keep it for its heartbeats.
        @Test("A fail-stopped node that keeps heartbeating is replaced: writes go on through the new chain, and status says why",
              .timeLimit(.minutes(2)))
        func aFailStoppedNodeIsReplaced() async throws {
            let disk = CrashSimulatingFileSystem()
            var options = Self.options()
            options.node = { index, configuration in
                guard index == 1 else { return }
                // The middle's disk, whose next fsync fails when the test says. Nothing but its log
                // syncs meanwhile — no compaction scheduler's watermark (a failure there is retried,
                // not fatal), no small segments sealed — so the fsync that fails is the log's.
                configuration.store.fileSystem = disk
                configuration.compaction.interval = .seconds(3600)
                configuration.compaction.watermarkInterval = .seconds(3600)
            }
            try await withTestCluster(options) { cluster in
                let (n1, n2, n3) = (try NodeID("n1"), try NodeID("n2"), try NodeID("n3"))
                let load = try await Workload.start(cluster, count: 4)
                try await load.waitForProgress("the clients got going")
                let before = await cluster.master.configuration
                #expect(before.members.map(\.id) == [n1, n2, n3])

                // The middle's next fsync fails; a put makes it sync.
                disk.failNextSync()
                let put = Task { try await cluster.client.put("through-the-failure", [7]) }
                try await cluster.waitFor("the master removed the failed \(n2)", timeout: cluster.failureTimeout * 5) {
                    await cluster.master.configuration.role(of: n2) == nil
                }
                let removed = await cluster.master.configuration
                #expect(removed.members.map(\.id) == [n1, n3])
                #expect(removed.epoch > before.epoch)
                #expect(!cluster.hasStopped(n2), "the failed node runs on (and heartbeats)")

                // Writes go on through n1 -> n3.
                let receipt = try await put.value
                #expect(try await cluster.client.get("through-the-failure").info.lsn == receipt.lsn)
                try await load.waitForProgress("writes went on without \(n2)")
                let later = try await cluster.client.put("after-the-removal", [8])
                #expect(try await cluster.client.get("after-the-removal").info.lsn == later.lsn)

                // The master says it failed, and why.
                let status = try await cluster.waitForStatus("\(n2) is reported failed") { $0.node(n2)?.health == .failed }
                let entry = try #require(status.node(n2))
                #expect(entry.role == nil)
                #expect(entry.reason?.contains("simulated I/O error") == true, "reason: \(entry.reason ?? "none")")

                try await cluster.verify(load, members: [n1, n3], standbys: [n2])
            }
        }
    }
}
