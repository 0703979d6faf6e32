import CatenaCluster
import CatenaCore
import CatenaNetwork
import CatenaWire
import Logging

/// What the master needs to run.
public struct MasterConfiguration: Sendable {
    /// The cluster; peers of other clusters are refused.
    public var clusterID: String
    /// Where to listen; port 0 picks a free port.
    public var listen: Address
    /// The directory holding the persisted configuration (`master.json`).
    public var dataDirectory: String
    /// Where to serve Prometheus metrics (`GET /metrics`); nil: nowhere.
    public var metrics: Address?
    /// The configuration to start from when the data directory holds none (the topology's).
    /// Once saved, the saved state wins.
    public var initial: ChainConfiguration

    /// Creates a configuration.
    public init(clusterID: String, listen: Address, dataDirectory: String, initial: ChainConfiguration) {
        self.clusterID = clusterID
        self.listen = listen
        self.dataDirectory = dataDirectory
        self.initial = initial
        self.metrics = nil
    }
}

/// What the master knows about one node from its heartbeats.
public struct MemberStatus: Hashable, Sendable {
    /// The node.
    public var id: NodeID
    /// The address it last announced.
    public var address: String
    /// The highest LSN in its log at its last heartbeat.
    public var highestLSN: LSN
    /// When its last heartbeat arrived.
    public var lastHeartbeat: ContinuousClock.Instant
}

/// The master: holds the chain configuration (epoch, ordered members and their addresses),
/// persists every change before announcing it, serves it to clients and nodes, and takes node
/// heartbeats — which register a node's real address (a node listening on port 0) and carry its
/// highest LSN. Failure detection and reconfiguration build on this (next milestone).
public final class Master: Sendable {
    /// The bound address.
    public let address: Address
    private let core: MasterCore
    private let server: FrameServer
    private let metricsServer: MetricsServer?
    private let logger: Logger

    private init(address: Address, core: MasterCore, server: FrameServer, metricsServer: MetricsServer?, logger: Logger) {
        self.address = address
        self.core = core
        self.server = server
        self.metricsServer = metricsServer
        self.logger = logger
    }

    /// Where metrics are served, if anywhere (the real port when configured with port 0).
    public var metricsAddress: Address? {
        metricsServer.map { Address(host: "127.0.0.1", port: UInt16($0.port)) }
    }

    /// Loads (or creates and persists) the configuration and binds the port.
    public static func start(_ configuration: MasterConfiguration, logger: Logger) async throws(CatenaError) -> Master {
        let file = MasterStateFile(directory: configuration.dataDirectory)
        let state: MasterState
        if let saved = try file.load(clusterID: configuration.clusterID, chainID: configuration.initial.chainID) {
            state = saved
            if saved.configuration.members.map(\.id) != configuration.initial.members.map(\.id) {
                logger.notice("the saved configuration overrides the topology file", metadata: [
                    "catena_saved_members": "\(saved.configuration.members.map(\.id.rawValue))",
                    "catena_topology_members": "\(configuration.initial.members.map(\.id.rawValue))",
                ])
            }
        } else {
            state = MasterState(initial: configuration.initial)
            try file.compareAndSwap(expectedEpoch: nil, new: state)
            logger.info("saved the initial configuration", metadata: [LogKey.epoch: "\(state.epoch)", LogKey.path: "\(file.path)"])
        }
        let server = try await FrameServer.bind(
            host: configuration.listen.host, port: Int(configuration.listen.port), clusterID: configuration.clusterID,
            localID: "master", acceptedRoles: [.client, .node, .master], allowsClusterDiscovery: true, logger: logger)
        let address = Address(host: configuration.listen.host, port: UInt16(server.port))
        let core = MasterCore(state: state, file: file, logger: logger)
        var metricsServer: MetricsServer?
        if let metrics = configuration.metrics {
            do {
                metricsServer = try await MetricsServer.bind(metrics, logger: logger) { await core.renderMetrics() }
            } catch {
                server.close()
                throw error
            }
        }
        return Master(address: address, core: core, server: server, metricsServer: metricsServer, logger: logger)
    }

    /// The current configuration.
    public var configuration: ChainConfiguration {
        get async { await core.state.configuration }
    }

    /// What the master knows about each member from heartbeats.
    public var members: [MemberStatus] {
        get async { await core.statuses }
    }

    /// Serves until the task is cancelled.
    public func run() async {
        logger.info("master listening", metadata: [LogKey.address: "\(address)"])
        let serving = Task {
            await self.server.run { (connection, reader) async throws(CatenaError) in
                try await self.serve(connection, &reader)
            }
        }
        let metrics = Task { await self.metricsServer?.run() }
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        server.close()
        metricsServer?.close()
        serving.cancel()
        metrics.cancel()
        await serving.value
        await metrics.value
        logger.info("master stopped")
    }

    private func serve(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        while let frame = try await reader.next() {
            let reply: Frame
            do throws(CatenaError) {
                switch frame.type {
                case .getConfiguration:
                    reply = configurationFrame(await core.state.configuration, replyingTo: frame)
                case .heartbeat:
                    guard connection.peer.role == .node else {
                        throw CatenaError(.protocolViolation, "only nodes heartbeat")
                    }
                    let chain = await core.state.chainID
                    guard frame.chainID == 0 || frame.chainID == chain else {
                        throw CatenaError(.invalidArgument, "this master serves chain \(chain), not chain \(frame.chainID)")
                    }
                    let beat = try Heartbeat(decoding: frame.payload)
                    guard beat.node.rawValue == connection.peer.senderID else {
                        throw CatenaError(.protocolViolation, "\(connection.peer.senderID) sent a heartbeat for \(beat.node)")
                    }
                    reply = configurationFrame(try await core.heartbeat(beat), replyingTo: frame)
                case .ping:
                    reply = Frame(type: .pong, flags: .reply, requestID: frame.requestID)
                default:
                    // Not a request the master knows: refuse it and end the connection.
                    throw CatenaError(.unknownFrameType, "the master does not take frame type \(frame.type.rawValue)")
                }
            } catch {
                if error.code == .unknownFrameType || error.code == .protocolViolation { throw error }
                reply = Frame.error(error, replyingTo: frame.requestID)
            }
            do {
                try await connection.outbound.write(reply)
            } catch {
                throw CatenaError(.unavailable, "connection lost: \(error)")
            }
        }
    }

    private func configurationFrame(_ configuration: ChainConfiguration, replyingTo frame: Frame) -> Frame {
        Frame(type: .configuration, flags: .reply, chainID: configuration.chainID, requestID: frame.requestID,
              epoch: configuration.epoch, payload: ConfigurationPayload.encode(configuration))
    }
}

/// The master's state: the persisted configuration and what heartbeats said.
actor MasterCore {
    private(set) var state: MasterState
    private let file: MasterStateFile
    private let logger: Logger
    private var seen: [NodeID: MemberStatus] = [:]

    init(state: MasterState, file: MasterStateFile, logger: Logger) {
        self.state = state
        self.file = file
        self.logger = logger
    }

    var statuses: [MemberStatus] { state.configuration.members.compactMap { seen[$0.id] } }

    /// The master's metrics in Prometheus text format: the epoch, and per member the time since
    /// its last heartbeat, its highest LSN and its lag behind the most advanced member.
    func renderMetrics() -> String {
        let now = ContinuousClock.now
        let members = state.configuration.members
        let top = members.compactMap { seen[$0.id]?.highestLSN.seq }.max() ?? 0
        var t = MetricsText()
        t.gauge("catena_master_epoch", "The current configuration epoch.", Double(state.epoch))
        t.gauge("catena_master_members", "Members of the chain.", Double(members.count))
        t.add("catena_master_member_heartbeat_age_seconds", "gauge", "Seconds since the member's last heartbeat.",
              members.compactMap { m in seen[m.id].map { ([("node", m.id.rawValue)], Double((now - $0.lastHeartbeat).nanosecondsClamped) / 1e9) } })
        t.add("catena_master_member_highest_seq", "gauge", "The highest durable seq the member reported.",
              members.compactMap { m in seen[m.id].map { ([("node", m.id.rawValue)], Double($0.highestLSN.seq)) } })
        t.add("catena_master_member_lag_records", "gauge", "Records the member is behind the most advanced member.",
              members.compactMap { m in seen[m.id].map { ([("node", m.id.rawValue)], Double(top - min(top, $0.highestLSN.seq))) } })
        return t.text
    }

    /// A node's heartbeat. A member announcing a new address gets it recorded in a new epoch,
    /// persisted before it is announced. A node that is not a member is refused.
    func heartbeat(_ beat: Heartbeat) throws(CatenaError) -> ChainConfiguration {
        let current = state.configuration
        guard let index = current.members.firstIndex(where: { $0.id == beat.node }) else {
            throw CatenaError(.notFound, "\(beat.node) is not a member of chain \(current.chainID) at epoch \(current.epoch)")
        }
        guard (try? Address(parsing: beat.address)).map({ !$0.isWildcard && $0.port != 0 }) ?? false else {
            throw CatenaError(.invalidArgument, "\(beat.node) announced '\(beat.address)', which peers cannot connect to")
        }
        seen[beat.node] = MemberStatus(id: beat.node, address: beat.address, highestLSN: beat.highestLSN, lastHeartbeat: .now)
        guard current.members[index].address != beat.address else { return current }
        var members = current.members
        members[index].address = beat.address
        let next = try ChainConfiguration(clusterID: current.clusterID, chainID: current.chainID, epoch: current.epoch + 1, members: members)
        var newState = state
        newState.configuration = next
        newState.epochHistory.append(EpochStart(epoch: next.epoch))
        try file.compareAndSwap(expectedEpoch: current.epoch, new: newState)
        state = newState
        logger.info("member address changed", metadata: [
            LogKey.node: "\(beat.node)", LogKey.address: "\(beat.address)", LogKey.epoch: "\(next.epoch)",
        ])
        return next
    }
}
