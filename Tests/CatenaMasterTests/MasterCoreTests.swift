@testable import CatenaMaster
import CatenaCluster
import CatenaCore
import CatenaTestSupport
import CatenaWire
import Foundation
import Logging
import Synchronization
import Testing

/// A master state store in memory — what an etcd store would be. ``overwrite(_:)`` is another
/// master or an operator changing the stored state behind this master's back.
private final class MemoryStateStore: MasterStateStore {
    private struct Contents {
        var stored: MasterState?
        var swaps = 0
        var refusedSwaps = 0
        var loads = 0
    }
    private let contents: Mutex<Contents>

    init(_ state: MasterState) { contents = Mutex(Contents(stored: state)) }

    var location: String { "memory" }
    var stored: MasterState? { contents.withLock { $0.stored } }
    var swaps: Int { contents.withLock { $0.swaps } }
    var refusedSwaps: Int { contents.withLock { $0.refusedSwaps } }
    var loads: Int { contents.withLock { $0.loads } }

    func overwrite(_ state: MasterState) { contents.withLock { $0.stored = state } }

    func load(clusterID: String, chainID: ChainID) throws(CatenaError) -> MasterState? {
        contents.withLock { c in
            c.loads += 1
            return c.stored
        }
    }

    func compareAndSwap(expectedEpoch: UInt64?, new: MasterState) throws(CatenaError) {
        let refused: UInt64?? = contents.withLock { c in
            c.swaps += 1
            guard c.stored?.epoch == expectedEpoch else {
                c.refusedSwaps += 1
                return .some(c.stored?.epoch)
            }
            c.stored = new
            return .none
        }
        if let refused {
            throw CatenaError(.staleEpoch, "memory: epoch \(refused.map(String.init) ?? "none") is stored, expected \(expectedEpoch.map(String.init) ?? "none")")
        }
    }
}

/// What a logger was given, level and message.
private func node(_ s: String) -> NodeID { try! NodeID(s) }
private func member(_ s: String) -> ChainMember { ChainMember(id: node(s), address: "127.0.0.1:\(7000 + Int(s.dropFirst())!)") }

private func state(_ ids: [String], epoch: UInt64, standbys: [String] = []) -> MasterState {
    MasterState(configuration: try! ChainConfiguration(clusterID: "test", chainID: 1, epoch: epoch, members: ids.map(member)),
                epochHistory: (1...epoch).map { EpochStart(epoch: $0, firstSeq: $0 * 100) }, standbys: standbys.map(member))
}

private func heartbeat(_ id: String, address: String? = nil) -> Heartbeat {
    Heartbeat(node: node(id), address: address ?? member(id).address, highestLSN: LSN(epoch: 1, seq: 500))
}

private func core(_ store: MemoryStateStore, _ records: CapturedLogs = CapturedLogs()) -> MasterCore {
    MasterCore(state: store.stored!, loaded: true, settings: ChainManager.Settings(failureTimeout: .seconds(30)), file: store,
               logger: capturingLogger(records))
}

@Suite("Master core: its state store changed behind its back")
struct MasterCoreStoreTests {
    @Test func aMasterThatLosesACompareAndSwapReloadsTheStoredStateInsteadOfRetryingItsOwn() async throws {
        let store = MemoryStateStore(state(["n1", "n2", "n3"], epoch: 4))
        let records = CapturedLogs()
        let master = core(store, records)
        _ = try await master.heartbeat(heartbeat("n1"), epoch: 4)
        // Another master (or an operator) moves the chain on: n3 is a standby at epoch 5.
        let theirs = state(["n1", "n2"], epoch: 5, standbys: ["n3"])
        store.overwrite(theirs)
        // n2 announces a new address: this master proposes epoch 5 from its epoch 4, and loses.
        let reply = try await master.heartbeat(heartbeat("n2", address: "127.0.0.1:8002"), epoch: 4)
        #expect(store.refusedSwaps == 1)
        #expect(await master.state == theirs, "it reloaded the stored state")
        #expect(reply.configuration == theirs.configuration, "and answers from it")
        #expect(records.count(.warning, containing: "another master or an operator changed the stored configuration") == 1)
        // It proposes from the reloaded state: the new address goes in as epoch 6, no swap refused again.
        _ = try await master.heartbeat(heartbeat("n2", address: "127.0.0.1:8002"), epoch: 5)
        for _ in 0..<5 { await master.advance() }
        #expect(store.refusedSwaps == 1)
        #expect(store.stored?.epoch == 6)
        #expect(store.stored?.configuration.members.map(\.address) == ["127.0.0.1:7001", "127.0.0.1:8002"])
        #expect(store.stored?.standbys == theirs.standbys)
    }

    @Test func aStateOlderThanTheChainsIsRefusedLoggedOnceAndReloadedOnceANewerOneIsInPlace() async throws {
        // master.json restored from a backup at epoch 3; the nodes run epoch 7.
        let store = MemoryStateStore(state(["n1", "n2", "n3"], epoch: 3))
        let records = CapturedLogs()
        let master = core(store, records)
        for id in ["n1", "n2", "n1"] {
            let error = await #expect(throws: CatenaError.self) { try await master.heartbeat(heartbeat(id), epoch: 7) }
            #expect(error?.code == .staleEpoch)
            #expect(error?.message.hasPrefix("the master's state (epoch 3) is older than the chain's: n1 runs epoch 7") == true)
        }
        await #expect(throws: CatenaError.self) { try await master.configurationForClients() }
        let status = await master.status()
        #expect(!status.available)
        #expect(status.reason?.hasPrefix("the master's state (epoch 3) is older than the chain's") == true)
        #expect(records.count(.error, containing: "older than the chain's") == 1, "logged once")
        // It proposes nothing, however long the members look silent to it.
        for _ in 0..<3 { await master.advance() }
        #expect(store.swaps == 0)
        // An older backup does not help; the latest does, and is reloaded.
        store.overwrite(state(["n1", "n2", "n3"], epoch: 5))
        await master.advance()
        #expect(await master.state.epoch == 3)
        let latest = state(["n2", "n3"], epoch: 7, standbys: ["n1"])
        store.overwrite(latest)
        await master.advance()
        #expect(await master.state == latest)
        let reply = try await master.heartbeat(heartbeat("n2"), epoch: 7)
        #expect(reply.configuration == latest.configuration)
        // A reloaded state grants leases only after a failure timeout (30 s here): a node running
        // a newer epoch would show the state stale first.
        #expect(reply.lease == nil)
        #expect(try await master.configurationForClients() == latest.configuration)
        #expect(records.count(.notice, containing: "as new as the chain's again") == 1)
    }

    @Test func aStoreThatWentBackBehindARunningMasterMakesItStale() async throws {
        let store = MemoryStateStore(state(["n1", "n2"], epoch: 6))
        let master = core(store)
        store.overwrite(state(["n1", "n2"], epoch: 2))
        // A new address to persist: the swap is refused, the stored state is older than what
        // this master activated: it refuses rather than hand out epoch 2 — to this heartbeat too.
        let error = await #expect(throws: CatenaError.self) { try await master.heartbeat(heartbeat("n1", address: "127.0.0.1:8001"), epoch: 6) }
        #expect(error?.code == .staleEpoch)
        #expect(store.refusedSwaps == 1)
        await #expect(throws: CatenaError.self) { try await master.heartbeat(heartbeat("n2"), epoch: 6) }
        #expect(await master.state.epoch == 2)
        #expect(await master.status().reason?.contains("this master had activated epoch 6") == true)
    }
}

@Suite("Master: its data directory")
struct MasterDirectoryTests {
    @Test func aSecondMasterOnTheSameDirectoryFailsAtStart() async throws {
        let directory = NSTemporaryDirectory() + "catena-master-lock-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let initial = try ChainConfiguration(clusterID: "test", chainID: 1, epoch: 1, members: [member("n1")])
        let configuration = MasterConfiguration(clusterID: "test", listen: Address(host: "127.0.0.1", port: 0),
                                                dataDirectory: directory, initial: initial)
        let logger = Logger(label: "catena.master-test", factory: { _ in SwiftLogNoOpLogHandler() })
        let first = try await Master.start(configuration, logger: logger)
        let running = Task { await first.run() }
        let error = await #expect(throws: CatenaError.self) { _ = try await Master.start(configuration, logger: logger) }
        #expect(error?.code == .directoryLocked)
        #expect(error?.message.contains("is another catena master using the data directory \(directory)?") == true)
        // Once the first has stopped, the directory is free.
        running.cancel()
        await running.value
        let second = try await Master.start(configuration, logger: logger)
        let again = Task { await second.run() }
        again.cancel()
        await again.value
    }
}
