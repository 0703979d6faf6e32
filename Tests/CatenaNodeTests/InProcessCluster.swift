import CatenaClient
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Foundation
import Logging

/// Tests log nothing unless CATENA_TEST_LOG names a level (e.g. CATENA_TEST_LOG=debug).
let testLogger: Logger = {
    guard let level = ProcessInfo.processInfo.environment["CATENA_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) else {
        return Logger(label: "catena.node-test", factory: { _ in SwiftLogNoOpLogHandler() })
    }
    var logger = Logger(label: "catena.node-test")
    logger.logLevel = level
    return logger
}()

/// What a test harness step failed at (the cluster did not come up in time, …).
struct HarnessError: Error, CustomStringConvertible {
    var description: String
}

/// A master and `n` storage nodes running in this process on 127.0.0.1 (port 0 each), every one
/// with its own temporary data directory, forming one chain `n1 -> n2 -> … -> nN` (head first).
///
/// ``start(nodes:configure:)`` returns once every node registered its real address with the
/// master, every node runs the master's latest configuration, and a write went through the whole
/// chain. ``stop()`` cancels every task (nodes first, the master last), waits for each to end and
/// removes the directories. Use ``withCluster(nodes:configure:_:)``, which stops the cluster
/// whether the test body returns or throws.
final class InProcessCluster: Sendable {
    static let clusterID = "node-tests"
    static let heartbeatInterval = Duration.milliseconds(20)

    let master: Master
    /// The nodes in chain order: `nodes[0]` is the head, the last one the tail.
    let nodes: [Node]
    /// A client of the cluster (it knows the cluster id).
    let client: CatenaClient
    /// The directory holding every data directory of this cluster.
    let directory: String
    private let masterTask: Task<Void, Never>
    private let nodeTasks: [Task<Void, Never>]

    private init(master: Master, nodes: [Node], client: CatenaClient, directory: String,
                 masterTask: Task<Void, Never>, nodeTasks: [Task<Void, Never>]) {
        self.master = master
        self.nodes = nodes
        self.client = client
        self.directory = directory
        self.masterTask = masterTask
        self.nodeTasks = nodeTasks
    }

    var head: Node { nodes[0] }
    var tail: Node { nodes[nodes.count - 1] }

    /// Starts the cluster. `configure(i, &configuration)` adjusts node `i`'s configuration
    /// (index in chain order) before it starts.
    static func start(nodes count: Int = 3,
                      configure: (Int, inout NodeConfiguration) -> Void = { _, _ in }) async throws -> InProcessCluster {
        let directory = NSTemporaryDirectory() + "catena-node-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ids = try (1...count).map { i throws(CatenaError) in try NodeID("n\(i)") }
        let initial = try ChainConfiguration(clusterID: clusterID, chainID: 1, epoch: 1,
                                             members: ids.map { ChainMember(id: $0, address: "127.0.0.1:0") })
        var masterTask: Task<Void, Never>?
        var nodeTasks: [Task<Void, Never>] = []
        do {
            let master = try await Master.start(
                MasterConfiguration(clusterID: clusterID, listen: Address(host: "127.0.0.1", port: 0),
                                    dataDirectory: directory + "/master", initial: initial),
                logger: testLogger)
            masterTask = Task { await master.run() }
            var nodes: [Node] = []
            for (i, id) in ids.enumerated() {
                var configuration = NodeConfiguration(
                    id: id, clusterID: clusterID, listen: Address(host: "127.0.0.1", port: 0), masters: [master.address],
                    dataDirectory: directory + "/\(id)")
                configuration.heartbeatInterval = heartbeatInterval
                configure(i, &configuration)
                let node = try await Node.start(configuration, logger: testLogger)
                nodes.append(node)
                nodeTasks.append(Task { await node.run() })
            }
            try await waitUntilConfigured(master: master, nodes: nodes)
            var clientConfiguration = CatenaClient.Configuration()
            clientConfiguration.clusterID = clusterID
            clientConfiguration.name = "node-tests-client"
            let client = try await CatenaClient(masters: [master.address.description], configuration: clientConfiguration,
                                                logger: testLogger)
            let cluster = InProcessCluster(master: master, nodes: nodes, client: client, directory: directory,
                                           masterTask: masterTask!, nodeTasks: nodeTasks)
            do {
                // A write through the whole chain: the chain accepts writes. (Deleting a missing
                // key succeeds and leaves nothing listed.)
                try await client.delete("harness/probe")
            } catch {
                await cluster.stop()
                throw error
            }
            return cluster
        } catch {
            await stopTasks(nodeTasks, masterTask)
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// Waits until the master knows every member's real address and every node runs the master's
    /// configuration (each registration bumps the epoch).
    private static func waitUntilConfigured(master: Master, nodes: [Node]) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            let configuration = await master.configuration
            let registered = configuration.members.allSatisfy { !$0.address.hasSuffix(":0") }
            if registered && nodes.allSatisfy({ $0.chainConfiguration == configuration }) { return }
            guard ContinuousClock.now < deadline else {
                throw HarnessError(description: "the chain did not converge: master has \(configuration), nodes have \(nodes.map { $0.chainConfiguration.map { "\($0.epoch)" } ?? "none" })")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Cancels every task — nodes first (each drains), then the master — waits for them to end,
    /// closes the client and removes the data directories.
    func stop() async {
        await client.close()
        await Self.stopTasks(nodeTasks, masterTask)
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func stopTasks(_ nodeTasks: [Task<Void, Never>], _ masterTask: Task<Void, Never>?) async {
        for task in nodeTasks { task.cancel() }
        for task in nodeTasks { await task.value }
        masterTask?.cancel()
        await masterTask?.value
    }

    // MARK: - Inspection

    /// Every live object in `node`'s local store, by key, read page by page.
    func replicaContents(_ node: Node) throws -> [Key: ObjectInfo] {
        var out: [Key: ObjectInfo] = [:]
        var after: Key?
        repeat {
            let page = try node.localStore.list(after: after, limit: 100)
            for info in page.objects { out[info.key] = info }
            after = page.nextCursor
        } while after != nil
        return out
    }

    /// A raw client connection to `node` (hello as a client of this cluster).
    func rawConnection(to node: Node, clusterID: String = InProcessCluster.clusterID) async throws(CatenaError) -> RequestConnection {
        try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: clusterID, senderID: "raw-test"))
    }

    /// The epoch every member runs now.
    var epoch: UInt64 {
        get async { await master.configuration.epoch }
    }
}

/// Runs `body` with a started cluster and stops the cluster afterwards, also when `body` throws.
func withCluster<R>(nodes: Int = 3, configure: (Int, inout NodeConfiguration) -> Void = { _, _ in },
                    _ body: (InProcessCluster) async throws -> R) async throws -> R {
    let cluster = try await InProcessCluster.start(nodes: nodes, configure: configure)
    do {
        let result = try await body(cluster)
        await cluster.stop()
        return result
    } catch {
        await cluster.stop()
        throw error
    }
}

/// Deterministic pseudo-random bytes.
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= raw.count {
            raw.storeBytes(of: generator.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < raw.count {
            raw[i] = UInt8(truncatingIfNeeded: generator.next())
            i += 1
        }
    }
    return out
}

/// The code of the ``CatenaError`` `error` is, if it is one.
func code(of error: any Error) -> CatenaError.Code? { (error as? CatenaError)?.code }
