import ArgumentParser
import CatenaBench
import CatenaCluster
import CatenaCore
import CatenaMaster
import CatenaNode
import Dispatch
import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Logging options of the server commands.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: unknown level '\(logLevel)'") }
    }

    /// Sends logs to stderr at the chosen level and returns a logger labelled `label`.
    func bootstrap(_ label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

/// `catena master`.
struct MasterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "master",
        abstract: "Run the master: it holds the chain configuration, detects failed nodes and reconfigures the chain.",
        discussion: """
            The first start saves the topology's chain to the data directory (master.json); from \
            then on the saved configuration wins over the topology file. A member without a \
            heartbeat for the topology's heartbeat.timeout_ms is removed from the chain (once its \
            lease, as long as the timeout, has run out); restarted members rejoin after catching \
            up. Prints one line 'ready master HOST:PORT' on stdout once it serves.
            """
    )

    @Option(name: .long, help: "The topology file.") var topology: String
    @Option(name: .long, help: "Listen here instead of the topology's address (port 0: any free port).") var listen: String?
    @Option(name: .long, help: "Keep state here instead of the topology's directory.") var dataDir: String?
    @Option(name: .long, help: "Serve Prometheus metrics here (default: the topology's master.metrics).") var metrics: String?
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let logger = logging.bootstrap("catena.master")
        let topology = try Topology.load(path: topology)
        let address = try listen.map { (text) throws(CatenaError) in try Address(parsing: text) } ?? topology.master.listen
        var configuration = MasterConfiguration(
            clusterID: topology.clusterID, listen: address, dataDirectory: dataDir ?? topology.master.data,
            initial: topology.initialConfiguration())
        configuration.metrics = try metrics.map { (text) throws(CatenaError) in try Address(parsing: text) } ?? topology.master.metrics
        configuration.heartbeat = topology.heartbeat
        let master = try await Master.start(configuration, logger: logger)
        announce("ready master \(master.address)")
        try await runUntilSignalled(master, logger: logger)
    }
}

/// `catena node`: runs a node (`catena node run`, the default: `catena node --id …` as always),
/// or checks a stopped node's files (`catena node verify`).
struct NodeGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a storage node (the default subcommand), or check a stopped node's data directory.",
        subcommands: [NodeCommand.self, NodeStatusCommand.self, NodeDrainCommand.self, NodeVerifyCommand.self],
        defaultSubcommand: NodeCommand.self
    )
}

/// `catena node [run]`.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a storage node.",
        discussion: """
            Takes its addresses and data directory from --topology, or from the explicit options \
            (which also override the topology). Prints one line 'ready node ID HOST:PORT' on \
            stdout once the master has its address.
            """
    )

    @Option(name: .long, help: "This node's id.") var id: String
    @Option(name: .long, help: "The topology file.") var topology: String?
    @Option(name: .long, help: "Listen here (port 0: any free port).") var listen: String?
    @Option(name: .long, help: "Announce this address to the master and peers (default: the bound address).") var advertise: String?
    @Option(name: .long, help: "Master address(es), HOST:PORT[,HOST:PORT].") var master: String?
    @Option(name: .long, help: "The data directory.") var dataDir: String?
    @Option(name: .long, help: "The cluster id (with no topology).") var cluster: String?
    @Option(name: .long, help: "batch (group commit, default), always (fsync per write) or none (unsafe).") var durability: String = "batch"
    @Option(name: .long, help: "With batch durability: how many microseconds the log writer waits for more writes to join a batch of two to seven before writing and syncing it (0 ... 10000; 0: never waits; default 400).")
    var groupCommitDelayUs: Int?
    @Option(name: .long, help: "Serve Prometheus metrics here (default: the topology's metrics address).") var metrics: String?
    @Option(name: .long, help: "How this node asks the tail for catch-up chunks when it (re)joins: lz4 (default) or none.")
    var catchUpCompression: CatchUpCompressionOption = .lz4
    @Option(name: .long, help: "The most MB/s this node copies from the tail when it (re)joins, for its first minute of copying (then full speed, so it catches up); 0: no bound.")
    var catchUpRate: Int = 300
    @Option(name: .long, help: "Compact when the garbage compaction could drop reaches this share of the sealed log (above 0, at most 1); 0: never compact.")
    var compactionGarbageRatio: Double = 0.5
    @Option(name: .long, help: "How many seconds a write's request id stays recognisable for retries: compaction keeps every record this recent (by head timestamps). Keep it at least twice the clients' request timeout (15 s by default).")
    var requestWindowSeconds: Int = 60
    @Option(name: .long, help: "The least milliseconds between two raises of the commit watermark (each fsyncs the STATE file).")
    var watermarkIntervalMs: Int = 5000
    @Option(name: .long, help: "How many hours a multipart upload may stay neither completed nor aborted, from its creation; then it takes no more parts and is collected. The same on every node of a chain.")
    var uploadExpiryHours: Int = 7 * 24
    @Option(name: .long, help: ArgumentHelp("Seal a log segment once it reaches this size (4KiB ... 1GiB; suffixes B, KiB, MiB, GiB).", valueName: "size"))
    var segmentSize: String = "64MiB"
    @OptionGroup var logging: LogOptions

    /// `--catch-up-compression`.
    enum CatchUpCompressionOption: String, ExpressibleByArgument, CaseIterable {
        case lz4, none
    }

    func validate() throws {
        guard catchUpRate >= 0 else { throw ValidationError("--catch-up-rate must be 0 (no bound) or a positive number of MB/s") }
        guard compactionGarbageRatio >= 0 && compactionGarbageRatio <= 1 else {
            throw ValidationError("--compaction-garbage-ratio must be 0 (never compact) or above 0 and at most 1, not \(compactionGarbageRatio)")
        }
        guard requestWindowSeconds >= 1 else { throw ValidationError("--request-window-seconds must be at least 1, not \(requestWindowSeconds)") }
        guard watermarkIntervalMs >= 10 else { throw ValidationError("--watermark-interval-ms must be at least 10, not \(watermarkIntervalMs)") }
        guard uploadExpiryHours >= 1 else { throw ValidationError("--upload-expiry-hours must be at least 1, not \(uploadExpiryHours)") }
        guard let size = parseSize(segmentSize), (4 << 10 ... 1 << 30).contains(size) else {
            throw ValidationError("--segment-size must be a size of 4KiB ... 1GiB, not '\(segmentSize)'")
        }
        guard topology != nil || (listen != nil && master != nil && dataDir != nil && cluster != nil) else {
            throw ValidationError("give --topology, or all of --cluster, --listen, --master and --data-dir")
        }
        guard ["batch", "always", "none"].contains(durability) else { throw ValidationError("--durability: batch, always or none") }
        try Self.validateGroupCommitDelay(groupCommitDelayUs)
    }

    /// Checks a `--group-commit-delay-us` for a node (also `bench-chain`'s, passed on to its nodes).
    static func validateGroupCommitDelay(_ microseconds: Int?) throws {
        if let us = microseconds, !(0...10_000).contains(us) {
            throw ValidationError("--group-commit-delay-us must be 0 ... 10000, not \(us)")
        }
    }

    func run() async throws {
        let logger = logging.bootstrap("catena.node")
        let nodeID = try NodeID(id)
        let topology = try topology.map { (path) throws(CatenaError) in try Topology.load(path: path) }
        let spec = topology?.node(nodeID)
        if topology != nil && spec == nil {
            throw CatenaError(.notFound, "node \(id) is not in the topology file")
        }
        func address(_ text: String?, _ fallback: Address?, _ what: String) throws(CatenaError) -> Address? {
            guard let text else { return fallback }
            do { return try Address(parsing: text) } catch { throw CatenaError(.invalidArgument, "--\(what): \(error.message)") }
        }
        guard let listenAddress = try address(listen, spec?.listen, "listen") else { throw CatenaError(.invalidArgument, "no listen address") }
        let advertised = try address(advertise, spec.map { $0.advertise.port == 0 ? nil : $0.advertise } ?? nil, "advertise")
        var masters: [Address] = []
        if let master {
            for m in master.split(separator: ",") { masters.append(try Address(parsing: String(m))) }
        } else if let topology {
            masters = [topology.master.advertise]
        }
        guard let clusterID = cluster ?? topology?.clusterID, let directory = dataDir ?? spec?.data else {
            throw CatenaError(.invalidArgument, "no cluster id or data directory")
        }
        var configuration = NodeConfiguration(id: nodeID, clusterID: clusterID, listen: listenAddress, advertise: advertised,
                                              masters: masters, dataDirectory: directory)
        if let topology { configuration.heartbeatInterval = topology.heartbeat.interval }
        configuration.metrics = try address(metrics, spec?.metrics, "metrics")
        configuration.store.durability = durability == "always" ? .always : durability == "none" ? .none : .batch
        if let groupCommitDelayUs { configuration.store.groupCommitDelay = .microseconds(groupCommitDelayUs) }
        configuration.catchUpCompression = catchUpCompression == .lz4
        configuration.catchUpBytesPerSecond = catchUpRate == 0 ? nil : catchUpRate * 1_000_000
        configuration.compaction.garbageRatio = compactionGarbageRatio == 0 ? nil : compactionGarbageRatio
        configuration.store.requestWindow = .seconds(requestWindowSeconds)
        configuration.store.abandonedUploadTimeout = .seconds(uploadExpiryHours * 3600)
        configuration.compaction.watermarkInterval = .milliseconds(watermarkIntervalMs)
        configuration.store.segmentSize = parseSize(segmentSize) ?? configuration.store.segmentSize
        let node = try await Node.start(configuration, logger: logger)
        try await runUntilSignalled(AnnouncedNode(node: node), logger: logger)
    }
}

/// Prints `line` on stdout at once (the ready line a supervisor waits for).
func announce(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// A node that prints its ready line once the master accepted it.
struct AnnouncedNode: Service {
    let node: Node

    func run() async {
        let id = node.configuration.id
        await node.run { chain in
            let role = chain.role(of: id).map { "\($0)" } ?? "not a member"
            announce("ready node \(id) \(node.address) epoch \(chain.epoch) \(role)")
        }
    }
}

/// Runs `body` as ``runUntilSignalled(_:logger:)`` runs a service; a graceful shutdown cancels it.
func runUntilSignalled(logger: Logger, _ body: @escaping @Sendable () async -> Void) async throws {
    try await runUntilSignalled(CancelledOnShutdown(body: body), logger: logger)
}

/// A service whose body runs until it is cancelled, which a graceful shutdown does.
struct CancelledOnShutdown: Service {
    let body: @Sendable () async -> Void

    func run() async throws {
        await cancelWhenGracefulShutdown { await body() }
    }
}

/// Runs `service` in a `ServiceGroup` until SIGINT or SIGTERM, or until the parent named in
/// `CATENA_PARENT_PID` is gone; then shuts it down gracefully and waits for it. A second signal
/// exits at once (status 130).
func runUntilSignalled(_ service: some Service, logger: Logger) async throws {
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(
        services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    // The group handles the first signal; these count, and the second ends the process.
    // Ignored first, so that no signal can end the process before the sources are in place.
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let signalled = SignalCount()
    let sources = [SIGINT, SIGTERM].map { sig in
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            if signalled.increment() > 1 { exit(130) }
            logger.info("signal \(sig): shutting down")
        }
        source.resume()
        return source
    }
    let watcher: Task<Void, Never>? = ProcessInfo.processInfo.environment["CATENA_PARENT_PID"].flatMap(Int32.init).map { parent in
        Task {
            // Children of `catena up` exit when it dies, however it dies.
            while !Task.isCancelled {
                if getppid() != parent {
                    logger.warning("parent process \(parent) is gone: shutting down")
                    await group.triggerGracefulShutdown()
                    return
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }
    defer {
        watcher?.cancel()
        for s in sources { s.cancel() }
    }
    try await group.run()
}

/// Counts signals from the dispatch queue's handler.
final class SignalCount: @unchecked Sendable {
    // Guarded by `lock`; touched only from signal handlers on a dispatch queue.
    private var count = 0
    private let lock = NSLock()

    func increment() -> Int {
        lock.lock()
        defer { lock.unlock() }
        count += 1
        return count
    }
}
