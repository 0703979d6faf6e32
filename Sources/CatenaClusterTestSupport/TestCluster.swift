import CatenaClient
import CatenaCluster
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The cluster harness of the tests: a master and storage nodes `n1 … nN` forming one chain
/// (`n1` the head, unless ``Options/chainOrder`` says otherwise), on 127.0.0.1 with ephemeral
/// ports, each with a data directory of its own under ``directory``.
///
/// One API over two backends (``Backend``):
/// - ``Backend/inProcess``: the master and the nodes run in this process (fast). A node stops
///   and starts again on its data directory, the master stops and restarts on its port and data,
///   each node's `NodeConfiguration` and the master's `MasterConfiguration` are the test's to
///   adjust (``Options/node``, ``Options/master``), and the nodes may count their leases on a
///   ``ManualNodeClock`` (``Options/manualClock``).
/// - ``Backend/processes``: real `catena` processes through `LocalCluster`, for SIGKILL and
///   SIGSTOP/SIGCONT (``signal(_:_:)``, ``kill(_:)``); every child shuts itself down if the test
///   process dies.
///
/// Shared: ``start(_:)`` returns once every node registered with the master and the chain took a
/// write; ``client``, ``admin``; ``startNode(_:configure:)``, ``stopNode(_:)``;
/// ``waitFor(_:timeout:_:)`` and ``waitForStatus(_:timeout:_:)``; per-node inspection (`log(of:)`,
/// `contents(of:)`, ``openStore(of:)``, ``status()``); the ``Workload`` and
/// ``verify(_:members:standbys:sourceLocation:)``. ``stop()`` stops every task or process it
/// started (nodes first, the master last; processes by PID) and removes the directory;
/// ``shutDown()`` stops them and keeps the data. Use ``withTestCluster(_:_:)``, which stops the
/// cluster however the test body ends.
///
/// Members that make sense for one backend only say so; called on the other, a throwing one
/// throws ``HarnessError`` and a property stops the test process (a bug in the test).
public final class TestCluster: Sendable {
    /// The cluster id of every test cluster.
    public static let clusterID = "catena-tests"

    /// Where the master and the nodes run.
    public enum Backend: Sendable, CustomStringConvertible {
        /// In this process: `Master` and `Node` values, each run in a task.
        case inProcess
        /// As `catena` child processes (`LocalCluster`).
        case processes

        /// `in-process` or `processes`.
        public var description: String { self == .inProcess ? "in-process" : "processes" }
    }

    /// How to set up a cluster. The defaults suit most tests.
    public struct Options: Sendable {
        /// Where the master and the nodes run.
        public var backend: Backend
        /// How many nodes: `n1 … nN`.
        public var nodes: Int
        /// The initial chain, head first (it overrides ``nodes``); nil: `n1 … nN`. The master's
        /// saved state, if ``directory`` holds one, wins.
        public var chainOrder: [NodeID]?
        /// Whether ``TestCluster/start(_:)`` starts the nodes and waits until the chain takes a
        /// write; if false only the master starts (the chain's members at port 0) and the test
        /// starts nodes with ``TestCluster/startNode(_:configure:)``. In-process only.
        public var startsNodes = true
        /// How often nodes heartbeat the master. Default: 20 ms in process, 50 ms for processes.
        public var heartbeatInterval: Duration
        /// How long the master waits for a member's heartbeat before it removes the member; also
        /// the lease it grants. Default 1 s.
        public var failureTimeout: Duration = .seconds(1)
        /// The configuration of ``TestCluster/client`` (its cluster id is set by the harness).
        public var client = CatenaClient.Configuration()
        /// How long one call of ``TestCluster/admin`` may take.
        public var adminTimeout: Duration = .seconds(10)
        /// Adjusts a node's configuration before it starts (every time it starts). The index is the
        /// node's position in the initial chain (0: the head); a node started later that is not in
        /// it gets the next index. In-process only.
        public var node: @Sendable (_ index: Int, _ configuration: inout NodeConfiguration) -> Void = { _, _ in }
        /// Adjusts the master's configuration once, before it first starts; a restart reuses it.
        /// In-process only.
        public var master: @Sendable (_ configuration: inout MasterConfiguration) -> Void = { _ in }
        /// Whether the nodes count their leases on one shared ``ManualNodeClock``
        /// (``TestCluster/clock``) that moves only when the test advances it. In-process only.
        public var manualClock = false
        /// Extra arguments of every `catena node` process. Processes only.
        public var nodeArguments: [String] = []
        /// The name of the children's log file in `CATENA_TEST_LOG_DIR` (`NAME.log`, info level)
        /// when that variable is set; otherwise they log warnings to nowhere. Processes only.
        public var logName: String?
        /// A directory to run in, which the caller owns (it is not removed; the master's state
        /// and the nodes' data in it are reused); nil: a fresh one the cluster removes.
        public var directory: String?

        /// Options for `nodes` nodes on `backend`, with `node` adjusting each node's configuration.
        public init(_ backend: Backend = .inProcess, nodes: Int = 3,
                    node: @escaping @Sendable (_ index: Int, _ configuration: inout NodeConfiguration) -> Void = { _, _ in }) {
            self.backend = backend
            self.nodes = nodes
            self.node = node
            self.heartbeatInterval = backend == .inProcess ? .milliseconds(20) : .milliseconds(50)
        }
    }

    /// The options the cluster was started with.
    public let options: Options
    /// The directory holding the master's and every node's data directory (`master`, `n1`, …).
    public let directory: String
    /// The nodes of the initial chain, head first.
    public let nodeIDs: [NodeID]
    /// A client of the cluster.
    public let client: CatenaClient
    /// Chain maintenance and status through the master.
    public let admin: ChainAdmin
    /// The clock every in-process node counts its lease on, if ``Options/manualClock``.
    public let clock: ManualNodeClock?
    let runtime: Runtime
    private let ownsDirectory: Bool
    private let ended = Mutex(false)
    /// Workloads started on this cluster, stopped by ``stop()`` if the test has not stopped them
    /// (a test that fails before its `verify` would otherwise leave their clients running).
    private let workloads = Mutex<[Workload]>([])

    /// The backend's machinery.
    enum Runtime: Sendable {
        case inProcess(InProcessRuntime)
        case processes(ProcessRuntime)
    }

    private init(options: Options, directory: String, ownsDirectory: Bool, nodeIDs: [NodeID], client: CatenaClient,
                 admin: ChainAdmin, clock: ManualNodeClock?, runtime: Runtime) {
        self.options = options
        self.directory = directory
        self.ownsDirectory = ownsDirectory
        self.nodeIDs = nodeIDs
        self.client = client
        self.admin = admin
        self.clock = clock
        self.runtime = runtime
    }

    /// Where the master and the nodes run.
    public var backend: Backend { options.backend }
    /// The master's failure timeout (and the leases it grants).
    public var failureTimeout: Duration { options.failureTimeout }

    /// The master's address.
    public var masterAddress: Address {
        switch runtime {
        case .inProcess(let r): r.master.address
        case .processes(let r): r.processes.masterAddress
        }
    }

    // MARK: - Starting and stopping

    /// Starts a master and, unless ``Options/startsNodes`` is false, every node; returns once
    /// every node registered its address with the master (in process: and runs the master's
    /// configuration; processes: and is a healthy member) and the chain took a write (a delete of
    /// `harness/probe`, which leaves nothing listed). On failure, whatever was started is stopped
    /// and the directory removed.
    public static func start(_ options: Options = Options()) async throws -> TestCluster {
        precondition(options.nodes >= 1, "a cluster needs a node")
        let ids = try options.chainOrder ?? (1...options.nodes).map { i throws(CatenaError) in try NodeID("n\(i)") }
        let ownsDirectory = options.directory == nil
        let directory = options.directory ?? NSTemporaryDirectory() + "catena-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var clientConfiguration = options.client
        clientConfiguration.clusterID = clusterID
        let clock = options.manualClock ? ManualNodeClock() : nil
        var runtime: Runtime?
        do {
            switch options.backend {
            case .inProcess:
                let r = try await InProcessRuntime.start(options: options, directory: directory, chain: ids, clock: clock)
                runtime = .inProcess(r)
                if options.startsNodes {
                    for id in ids { _ = try await r.startNode(id) }
                    try await poll("every node registered and runs the master's configuration", timeout: .seconds(30)) {
                        await r.hasConverged()
                    }
                }
            case .processes:
                runtime = .processes(try await ProcessRuntime.start(options: options, directory: directory, chain: ids))
            }
            let masters = [runtime!.masterAddress.description]
            let admin = try ChainAdmin(masters: masters, clusterID: clusterID, timeout: options.adminTimeout)
            let client = try CatenaClient(masters: masters, configuration: clientConfiguration, logger: testLogger)
            try await client.connect()
            let cluster = TestCluster(options: options, directory: directory, ownsDirectory: ownsDirectory, nodeIDs: ids,
                                      client: client, admin: admin, clock: clock, runtime: runtime!)
            do {
                if options.backend == .processes {
                    try await cluster.waitForStatus("every node is a healthy member", timeout: .seconds(30)) {
                        $0.hasSettled(members: ids)
                    }
                }
                if options.startsNodes {
                    try await cluster.waitFor("the chain takes writes", timeout: .seconds(30)) {
                        (try? await client.delete("harness/probe")) != nil
                    }
                }
            } catch {
                await cluster.stop()
                throw error
            }
            return cluster
        } catch {
            await runtime?.stopAll()
            if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
            throw error
        }
    }

    /// Stops everything the cluster started — every node (in process: cancelled and drained; a
    /// process: SIGCONT, SIGTERM, SIGKILL after 10 s, by its PID), then the master — closes the
    /// client and removes the directory (unless the caller gave it). Safe to call twice.
    public func stop() async {
        guard !ended.withLock({ (e: inout Bool) -> Bool in defer { e = true }; return e }) else { return }
        for load in workloads.withLock({ $0 }) { await load.stop() }
        await client.close()
        await runtime.stopAll()
        if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Stops every node and the master as ``stop()`` does, but keeps the directory and the
    /// client: the stores can be opened then (``openStore(of:)``).
    public func shutDown() async {
        await runtime.stopAll()
    }

    /// Registers `load` to be stopped with the cluster.
    func adopt(_ load: Workload) {
        workloads.withLock { $0.append(load) }
    }

    // MARK: - Nodes

    /// Starts node `id` on its data directory (again): in process, a `Node` with ``Options/node``
    /// and then `configure` applied to its configuration, which it returns; a process is started
    /// again with its first arguments (killed first if it still runs), and nil is returned. Its
    /// port may change. It does not wait for the node to join the chain.
    @discardableResult
    public func startNode(_ id: NodeID, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> Node? {
        switch runtime {
        case .inProcess(let r):
            return try await r.startNode(id, configure: configure)
        case .processes(let r):
            try await r.processes.restart(id.rawValue)  // throws notFound for a node not in the topology
            return nil
        }
    }

    /// Stops node `id` gracefully and waits until it has: in process its run is cancelled (it
    /// drains); a process gets SIGTERM (SIGKILL after 10 s).
    public func stopNode(_ id: NodeID) async {
        switch runtime {
        case .inProcess(let r):
            await r.stopNode(id)
        case .processes(let r):
            guard r.processes.isRunning(id.rawValue) else { return }
            r.processes.signal(id.rawValue, SIGCONT)
            r.processes.signal(id.rawValue, SIGTERM)
            _ = await r.processes.waitForExit(id.rawValue, timeout: .seconds(10))
        }
    }

    /// Whether node `id` is not running: stopped, never started, or (in process) its run ended by
    /// itself — the master removed it.
    public func hasStopped(_ id: NodeID) -> Bool {
        switch runtime {
        case .inProcess(let r): r.hasStopped(id)
        case .processes(let r): !r.processes.isRunning(id.rawValue)
        }
    }

    // MARK: - Waiting

    /// Checks `condition` every 10 ms until it holds; throws ``HarnessError`` naming `what` if it
    /// does not within `timeout`.
    public func waitFor(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
        try await Self.poll(what, timeout: timeout, condition)
    }

    static func poll(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !(try await condition()) {
            guard ContinuousClock.now < deadline else { throw HarnessError(description: "timed out after \(timeout) waiting until \(what)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Asks the master for the chain's status every 50 ms until `condition` holds of it, and
    /// returns that status; throws ``HarnessError`` naming `what` and the last status if it does
    /// not within `timeout`.
    @discardableResult
    public func waitForStatus(_ what: String, timeout: Duration = .seconds(20),
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
        throw HarnessError(description: "timed out after \(timeout) waiting until \(what); last status: \(last?.summary ?? "none")")
    }

    /// The member at `role` now (the first, for a middle), by the master's status; waits until
    /// the chain has one.
    public func member(at role: ChainRole) async throws -> NodeID {
        let status = try await waitForStatus("the chain has a \(role)") { $0.member(at: role) != nil }
        return status.member(at: role)!
    }

    // MARK: - Inspection

    /// The chain's status, from the master.
    public func status() async throws -> ChainStatus {
        try await admin.status()
    }

    /// One record of a log, as replicas must agree on it.
    public struct LogEntry: Hashable, Sendable, CustomStringConvertible {
        /// The record's LSN.
        public var lsn: LSN
        /// Its key.
        public var key: String
        /// Its content checksum.
        public var checksum: UInt64

        /// An entry.
        public init(lsn: LSN, key: String, checksum: UInt64) {
            self.lsn = lsn
            self.key = key
            self.checksum = checksum
        }

        /// `4.17 key-3 9f03a1…`: LSN, key, checksum in hex.
        public var description: String { "\(lsn) \(key) \(String(checksum, radix: 16))" }
    }

    /// Every record of node `id`'s log: of the running node's store in process, else of its data
    /// directory (the node must not be running then).
    public func log(of id: NodeID) async throws -> [LogEntry] {
        if let node = runningNode(id) { return try await Self.log(of: node.localStore) }
        let store = try await openStore(of: id)
        do {
            let log = try await Self.log(of: store)
            await store.close()
            return log
        } catch {
            await store.close()
            throw error
        }
    }

    /// Every record of `store`'s log.
    public static func log(of store: Store) async throws -> [LogEntry] {
        try await store.records(after: .zero).collect().map {
            LogEntry(lsn: $0.lsn, key: $0.key.string, checksum: $0.header.contentChecksum)
        }
    }

    /// Every live object of node `id`, by key: of the running node's store in process, else of
    /// its data directory (the node must not be running then).
    public func contents(of id: NodeID) async throws -> [Key: ObjectInfo] {
        if let node = runningNode(id) { return try Self.contents(of: node.localStore) }
        let store = try await openStore(of: id)
        let contents = Result { try Self.contents(of: store) }
        await store.close()
        return try contents.get()
    }

    /// Every live object of in-process `node`'s store, by key.
    public func contents(of node: Node) throws -> [Key: ObjectInfo] {
        try Self.contents(of: node.localStore)
    }

    /// Every live object in `store`, by key, read page by page.
    public static func contents(of store: Store) throws -> [Key: ObjectInfo] {
        var out: [Key: ObjectInfo] = [:]
        var after: Key?
        repeat {
            let page = try store.list(after: after, limit: 100)
            for info in page.objects { out[info.key] = info }
            after = page.nextCursor
        } while after != nil
        return out
    }

    /// Node `id`'s store, opened from its data directory with the configuration the node runs
    /// with (its file system included). The node must not be running; the caller closes it.
    public func openStore(of id: NodeID) async throws -> Store {
        try await Store.open(storeConfiguration(of: id), logger: testLogger)
    }

    /// The store configuration node `id` runs with.
    public func storeConfiguration(of id: NodeID) -> StoreConfiguration {
        switch runtime {
        case .inProcess(let r): r.nodeConfiguration(id).store
        case .processes: StoreConfiguration(directory: directory + "/\(id)", clusterID: Self.clusterID, nodeID: id.rawValue)
        }
    }

    private func runningNode(_ id: NodeID) -> Node? {
        if case .inProcess(let r) = runtime { return r.node(id) }
        return nil
    }
}

// MARK: - In process only

extension TestCluster {
    private var inProcess: InProcessRuntime {
        guard case .inProcess(let r) = runtime else { preconditionFailure("this needs the in-process backend") }
        return r
    }

    private func requireInProcess() throws -> InProcessRuntime {
        guard case .inProcess(let r) = runtime else { throw HarnessError(description: "this needs the in-process backend") }
        return r
    }

    /// The master (the one started last). In process only.
    public var master: Master { inProcess.master }

    /// The running nodes: those of the initial chain in its order (head first), then the ones
    /// started later. In process only.
    public var nodes: [Node] { inProcess.runningNodes }

    /// The first of ``nodes``: the head the chain started with. In process only.
    public var head: Node { nodes.first! }

    /// The last of ``nodes``: the tail the chain started with. In process only.
    public var tail: Node { nodes.last! }

    /// Node `id` if it runs (in process); nil otherwise.
    public func node(_ id: NodeID) -> Node? { runningNode(id) }

    /// The epoch of the master's configuration. In process only.
    public var epoch: UInt64 {
        get async { await master.configuration.epoch }
    }

    /// Node `id`'s configuration, as ``startNode(_:configure:)`` starts it (before `configure`).
    /// In process only.
    public func nodeConfiguration(_ id: NodeID) -> NodeConfiguration { inProcess.nodeConfiguration(id) }

    /// Waits until the master knows every member's real address and every running node runs the
    /// master's configuration. In process only.
    public func waitForConvergence(timeout: Duration = .seconds(20)) async throws {
        let r = try requireInProcess()
        try await waitFor("every member registered and every running node runs the master's configuration", timeout: timeout) {
            await r.hasConverged()
        }
    }

    /// Stops the master and waits until it has stopped. In process only.
    public func stopMaster() async throws {
        await (try requireInProcess()).stopMaster()
    }

    /// Starts the master again on the same port and data directory (state store included). In
    /// process only.
    public func restartMaster() async throws {
        try await (try requireInProcess()).restartMaster()
    }

    /// Moves ``clock`` — every node's lease clock — forward by `duration`. In process, with
    /// ``Options/manualClock`` only.
    public func advanceClocks(by duration: Duration) {
        guard let clock else { preconditionFailure("the cluster's nodes have no manual clock (Options.manualClock)") }
        clock.advance(by: duration)
    }

    /// A raw client connection to `node` (hello as a client of this cluster, or of `clusterID`).
    public func rawConnection(to node: Node, clusterID: String = TestCluster.clusterID) async throws(CatenaError) -> RequestConnection {
        try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: clusterID, senderID: "raw-test"))
    }
}

// MARK: - Processes only

extension TestCluster {
    private var processRuntime: ProcessRuntime {
        guard case .processes(let r) = runtime else { preconditionFailure("this needs the processes backend") }
        return r
    }

    /// The `catena` processes. Processes only.
    public var processes: LocalCluster { processRuntime.processes }

    /// Sends `signal` to node `id`'s process. Processes only.
    public func signal(_ id: NodeID, _ signal: Int32) {
        processRuntime.processes.signal(id.rawValue, signal)
    }

    /// Sends `signal` to the master's process. Processes only.
    public func signalMaster(_ signal: Int32) {
        processRuntime.processes.signal("master", signal)
    }

    /// Waits until node `id`'s process exits; its status, or nil if it did not within `timeout`
    /// (it is SIGKILLed then). Processes only.
    public func waitForExit(_ id: NodeID, timeout: Duration) async -> Int32? {
        await processRuntime.processes.waitForExit(id.rawValue, timeout: timeout)
    }

    /// SIGKILLs node `id`'s process and waits until it is gone (5 s at most). Processes only.
    public func kill(_ id: NodeID) async throws {
        guard case .processes(let r) = runtime else { throw HarnessError(description: "kill needs the processes backend") }
        let processes = r.processes
        processes.signal(id.rawValue, SIGKILL)
        guard await processes.waitForExit(id.rawValue, timeout: .seconds(5)) != nil else {
            throw HarnessError(description: "\(id) did not die")
        }
    }

    /// Writes a topology file (`name` in `directory`) for the nodes `chain` (head first), all on
    /// 127.0.0.1 port 0 with their data under `directory`, heartbeats every `heartbeatInterval`
    /// and the failure timeout `failureTimeout`; returns its path.
    public static func writeTopology(in directory: String, chain: [NodeID], heartbeatInterval: Duration = .milliseconds(50),
                                     failureTimeout: Duration = .seconds(1), name: String = "topology.yaml") throws -> String {
        var yaml = """
            version: 1
            cluster: \(clusterID)
            master:
              listen: 127.0.0.1:0
              data: \(directory)/master
            heartbeat:
              interval_ms: \(milliseconds(heartbeatInterval))
              timeout_ms: \(milliseconds(failureTimeout))
            nodes:

            """
        for id in chain {
            yaml += "  - id: \(id)\n    listen: 127.0.0.1:0\n    data: \(directory)/\(id)\n"
        }
        let file = directory + "/" + name
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: file))
        return file
    }

    /// Writes a topology of `nodes` nodes `n1 … nN` (see ``writeTopology(in:chain:heartbeatInterval:failureTimeout:name:)``).
    public static func writeTopology(in directory: String, nodes: Int, heartbeatInterval: Duration = .milliseconds(50),
                                     failureTimeout: Duration = .seconds(1), name: String = "topology.yaml") throws -> String {
        try writeTopology(in: directory, chain: (1...nodes).map { try NodeID("n\($0)") }, heartbeatInterval: heartbeatInterval,
                          failureTimeout: failureTimeout, name: name)
    }

    private static func milliseconds(_ d: Duration) -> Int {
        Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
    }
}

/// Starts a cluster with `options`, runs `body` with it, and stops the cluster (every task and
/// process it started, its directory removed) whether `body` returns or throws — also when the
/// test was cancelled (the stop runs in a task of its own).
public func withTestCluster<R>(_ options: TestCluster.Options = TestCluster.Options(),
                               _ body: (TestCluster) async throws -> R) async throws -> R {
    let cluster = try await TestCluster.start(options)
    let result: Result<R, any Error>
    do {
        result = .success(try await body(cluster))
    } catch {
        result = .failure(error)
    }
    await Task { await cluster.stop() }.value
    return try result.get()
}

extension TestCluster.Runtime {
    var masterAddress: Address {
        switch self {
        case .inProcess(let r): r.master.address
        case .processes(let r): r.processes.masterAddress
        }
    }

    func stopAll() async {
        switch self {
        case .inProcess(let r): await r.stopAll()
        case .processes(let r): await r.stopAll()
        }
    }
}
