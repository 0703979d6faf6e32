import CatenaCluster
import CatenaCore
import CatenaMaster
import CatenaNode
import CatenaTestSupport
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The in-process backend: a `Master` and `Node`s, each run in a task of its own.
final class InProcessRuntime: Sendable {
    let directory: String
    let options: TestCluster.Options
    let clock: ManualNodeClock?
    /// Made once: a restart reuses it (its state store too), on the first master's port.
    let masterConfiguration: MasterConfiguration
    private let state: Mutex<State>

    private struct State {
        var master: Master
        var masterTask: Task<Void, Never>?
        var nodes: [NodeID: Running] = [:]
        /// Every node id the cluster knows, in index order: the initial chain, then later ones.
        var known: [NodeID]
    }

    /// A node's run, and whether it ended.
    private struct Running: Sendable {
        let node: Node
        let task: Task<Void, Never>
        let ended: Flag
    }

    private init(directory: String, options: TestCluster.Options, clock: ManualNodeClock?, masterConfiguration: MasterConfiguration,
                 master: Master, masterTask: Task<Void, Never>, chain: [NodeID]) {
        self.directory = directory
        self.options = options
        self.clock = clock
        self.masterConfiguration = masterConfiguration
        self.state = Mutex(State(master: master, masterTask: masterTask, known: chain))
    }

    /// Starts the master, whose initial chain is `chain` at port 0.
    static func start(options: TestCluster.Options, directory: String, chain: [NodeID], clock: ManualNodeClock?) async throws -> InProcessRuntime {
        let initial = try ChainConfiguration(clusterID: TestCluster.clusterID, chainID: 1, epoch: 1,
                                             members: chain.map { ChainMember(id: $0, address: "127.0.0.1:0") })
        var configuration = MasterConfiguration(clusterID: TestCluster.clusterID, listen: Address(host: "127.0.0.1", port: 0),
                                                dataDirectory: directory + "/master", initial: initial)
        configuration.heartbeat = HeartbeatSettings(intervalMilliseconds: Self.milliseconds(options.heartbeatInterval),
                                                    timeoutMilliseconds: Self.milliseconds(options.failureTimeout))
        options.master(&configuration)
        let master = try await Master.start(configuration, logger: testLogger)
        // Restarts listen where the first master did.
        configuration.listen = master.address
        let task = Task { await master.run() }
        return InProcessRuntime(directory: directory, options: options, clock: clock, masterConfiguration: configuration,
                                master: master, masterTask: task, chain: chain)
    }

    var master: Master { state.withLock { $0.master } }

    func stopMaster() async {
        guard let task = state.withLock({ s -> Task<Void, Never>? in defer { s.masterTask = nil }; return s.masterTask }) else { return }
        task.cancel()
        await waitForEnd(of: task, "the master")
    }

    func restartMaster() async throws {
        guard state.withLock({ $0.masterTask == nil }) else { throw HarnessError(description: "the master runs") }
        let master = try await Master.start(masterConfiguration, logger: testLogger)
        state.withLock {
            $0.master = master
            $0.masterTask = Task { await master.run() }
        }
    }

    /// Node `id`'s configuration: its data directory, 127.0.0.1 port 0, the master, the
    /// heartbeat interval, the manual clock if any, then ``TestCluster/Options/node``.
    func nodeConfiguration(_ id: NodeID) -> NodeConfiguration {
        let (index, masterAddress) = state.withLock { s -> (Int, Address) in
            if !s.known.contains(id) { s.known.append(id) }
            return (s.known.firstIndex(of: id)!, s.master.address)
        }
        var configuration = NodeConfiguration(id: id, clusterID: TestCluster.clusterID, listen: Address(host: "127.0.0.1", port: 0),
                                              masters: [masterAddress], dataDirectory: directory + "/\(id)")
        configuration.heartbeatInterval = options.heartbeatInterval
        if let clock { configuration.clock = clock }
        options.node(index, &configuration)
        return configuration
    }

    /// Starts node `id` (again), unless it runs; a run that ended by itself is forgotten first.
    func startNode(_ id: NodeID, configure: (inout NodeConfiguration) -> Void = { _ in }) async throws -> Node {
        let previous = try state.withLock { s throws(HarnessError) -> Running? in
            guard let running = s.nodes[id] else { return nil }
            guard running.ended.isSet else { throw HarnessError(description: "\(id) runs already") }
            s.nodes[id] = nil
            return running
        }
        await previous?.task.value
        var configuration = nodeConfiguration(id)
        configure(&configuration)
        let node = try await Node.start(configuration, logger: testLogger)
        let ended = Flag()
        let task = Task {
            await node.run()
            ended.set()
        }
        state.withLock { $0.nodes[id] = Running(node: node, task: task, ended: ended) }
        return node
    }

    /// Cancels node `id`'s run (it drains) and waits for it to end.
    func stopNode(_ id: NodeID) async {
        guard let running = state.withLock({ $0.nodes.removeValue(forKey: id) }) else { return }
        running.task.cancel()
        await waitForEnd(of: running.task, "node \(id)")
    }

    /// The node if it is started and its run has not ended.
    func node(_ id: NodeID) -> Node? {
        state.withLock { s in s.nodes[id].flatMap { $0.ended.isSet ? nil : $0.node } }
    }

    func hasStopped(_ id: NodeID) -> Bool {
        state.withLock { s in s.nodes[id]?.ended.isSet ?? true }
    }

    var runningNodes: [Node] {
        state.withLock { s in s.known.compactMap { id in s.nodes[id].flatMap { $0.ended.isSet ? nil : $0.node } } }
    }

    /// Whether the master knows every member's real address and every running node runs the
    /// master's configuration (each registration bumps the epoch).
    func hasConverged() async -> Bool {
        let configuration = await master.configuration
        guard configuration.members.allSatisfy({ !$0.address.hasSuffix(":0") }) else { return false }
        return runningNodes.allSatisfy { $0.chainConfiguration == configuration }
    }

    /// Cancels every node's run and waits for them (each drains), then the master's.
    func stopAll() async {
        let nodes = state.withLock { s -> [(NodeID, Running)] in defer { s.nodes = [:] }; return Array(s.nodes) }
        for (_, running) in nodes { running.task.cancel() }
        for (id, running) in nodes { await waitForEnd(of: running.task, "node \(id)") }
        await stopMaster()
    }

    private static func milliseconds(_ d: Duration) -> Int {
        Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
    }
}

/// Waits until `task` ends, or `limit` passed: a node or master whose run does not end when
/// cancelled is recorded as a test failure naming `what` (and left behind), rather than holding
/// the test process forever where no time limit reaches it (stops run in tasks of their own).
func waitForEnd(of task: Task<Void, Never>, _ what: String, limit: Duration = .seconds(30)) async {
    let ended: Bool = await withCheckedContinuation { continuation in
        let first = ResumeOnce(continuation)
        first.timer = Task {
            try? await Task.sleep(for: limit)
            first.resume(false)
        }
        Task {
            await task.value
            first.resume(true)
        }
    }
    if !ended { Issue.record("\(what) did not stop within \(limit) of being cancelled") }
}

/// A continuation resumed by the first of two callers; the timer is cancelled when the other wins.
private final class ResumeOnce: Sendable {
    private let state: Mutex<(continuation: CheckedContinuation<Bool, Never>?, timer: Task<Void, Never>?)>
    init(_ continuation: CheckedContinuation<Bool, Never>) { state = Mutex((continuation, nil)) }
    var timer: Task<Void, Never>? {
        get { state.withLock { $0.timer } }
        set { state.withLock { $0.timer = newValue } }
    }
    func resume(_ value: Bool) {
        let (continuation, timer) = state.withLock { s in defer { s.continuation = nil }; return (s.continuation, s.timer) }
        continuation?.resume(returning: value)
        if continuation != nil && value { timer?.cancel() }
    }
}

/// Set once, read from anywhere.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// The processes backend: `catena` children through `LocalCluster`.
final class ProcessRuntime: Sendable {
    let processes: LocalCluster
    private let logFile: Mutex<FileHandle?>

    private init(processes: LocalCluster, logFile: FileHandle?) {
        self.processes = processes
        self.logFile = Mutex(logFile)
    }

    /// Writes the topology (the chain `chain`) and starts the master and the nodes; with
    /// `CATENA_TEST_LOG_DIR` set, they log at info level to `NAME.log` there.
    static func start(options: TestCluster.Options, directory: String, chain: [NodeID]) async throws -> ProcessRuntime {
        let topology = try TestCluster.writeTopology(in: directory, chain: chain, heartbeatInterval: options.heartbeatInterval,
                                                     failureTimeout: options.failureTimeout)
        var logLevel = "warning"
        var logFile: FileHandle?
        if let dir = ProcessInfo.processInfo.environment["CATENA_TEST_LOG_DIR"] {
            let path = dir + "/\(options.logName ?? "cluster-\(UUID().uuidString)").log"
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            logFile = FileHandle(forWritingAtPath: path)
            logLevel = "info"
        }
        do {
            let processes = try await LocalCluster.start(executable: try catenaExecutable(), topologyPath: topology, logLevel: logLevel,
                                                         nodeArguments: options.nodeArguments, stderr: logFile)
            return ProcessRuntime(processes: processes, logFile: logFile)
        } catch {
            try? logFile?.close()
            throw error
        }
    }

    /// Continues paused children, then stops every child by its PID (SIGTERM to the nodes, then
    /// the master; SIGKILL after 10 s).
    func stopAll() async {
        for child in processes.children where processes.isRunning(child.name) { kill(child.pid, SIGCONT) }
        await processes.stop()
        if let file = logFile.withLock({ f -> FileHandle? in defer { f = nil }; return f }) { try? file.close() }
    }
}
