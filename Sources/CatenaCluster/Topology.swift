import CatenaCore

/// A cluster's topology: its id, its chain, where the master and every node listen, where they
/// keep their data, and the heartbeat settings — read from a versioned YAML file
/// (`topology/README.md` documents the schema field by field).
///
/// A `Topology` is always valid: every way of making one checks it. Node ids are distinct;
/// listen and metrics addresses do not collide; advertised addresses are distinct and connectable;
/// data directories are non-empty, distinct and not inside one another; the heartbeat timeout is
/// longer than its interval. Errors are ``CatenaError/Code/invalidArgument`` with a message that
/// names the file, the field and what is wrong, e.g.
/// `topology/local.yaml: nodes[1].listen: '127.0.0.1' is not HOST:PORT`.
public struct Topology: Hashable, Sendable {
    /// The topology schema version this build reads.
    public static let schemaVersion = 1

    /// The cluster id (``NodeID/isValidIdentifier(_:)`` form); every node and the master check it.
    public let clusterID: String
    /// The chain's id, at least 1.
    public let chainID: ChainID
    /// The master's addresses and data directory.
    public let master: MasterSpec
    /// How often members heartbeat and when the master declares one dead.
    public let heartbeat: HeartbeatSettings
    /// The storage nodes in chain order, head first; at least one.
    public let nodes: [NodeSpec]

    /// Creates a topology in code (a test harness, say), checking it like a file; error messages
    /// name the offending field, prefixed with `topology`.
    public init(
        clusterID: String, chainID: ChainID = 1, master: MasterSpec,
        heartbeat: HeartbeatSettings = HeartbeatSettings(), nodes: [NodeSpec]
    ) throws(CatenaError) {
        try self.init(source: "topology", clusterID: clusterID, chainID: chainID, master: master, heartbeat: heartbeat, nodes: nodes)
    }

    /// Reads and checks the topology file at `path`; error messages start with `path`.
    public static func load(path: String) throws(CatenaError) -> Topology {
        let bytes: [UInt8]?
        do {
            bytes = try PosixIO.readFile(path)
        } catch {
            throw CatenaError(error.code, "\(path): cannot read the topology file: \(error.message)")
        }
        guard let bytes else { throw CatenaError(.invalidArgument, "\(path): no such topology file") }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CatenaError(.invalidArgument, "\(path): is not UTF-8 text")
        }
        return try parse(yaml: text, source: path)
    }

    /// Parses and checks topology YAML; `source` (usually the file's path) starts every error message.
    ///
    /// A `version` other than ``schemaVersion`` is refused with
    /// ``CatenaError/Code/unsupportedVersion``; every other problem is
    /// ``CatenaError/Code/invalidArgument``.
    public static func parse(yaml: String, source: String) throws(CatenaError) -> Topology {
        try TopologyParser(source: source).parse(yaml)
    }

    /// The node with this id, if the topology has one.
    public func node(_ id: NodeID) -> NodeSpec? {
        nodes.first { $0.id == id }
    }

    /// The chain's first configuration: epoch 1, every node in file order at its advertised address.
    public func initialConfiguration() -> ChainConfiguration {
        let members = nodes.map { ChainMember(id: $0.id, address: $0.advertise.description) }
        do {
            return try ChainConfiguration(clusterID: clusterID, chainID: chainID, epoch: 1, members: members)
        } catch {
            preconditionFailure("a checked topology has distinct node ids, yet: \(error)")
        }
    }

    /// Checks everything a single field cannot: the cross-field rules listed on ``Topology``.
    init(
        source: String, clusterID: String, chainID: ChainID, master: MasterSpec,
        heartbeat: HeartbeatSettings, nodes: [NodeSpec]
    ) throws(CatenaError) {
        func fail(_ field: String, _ problem: String) -> CatenaError {
            CatenaError(.invalidArgument, "\(source): \(field): \(problem)")
        }
        guard NodeID.isValidIdentifier(clusterID) else {
            throw fail("cluster", "'\(clusterID)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        guard chainID >= 1 else { throw fail("chain", "must be at least 1") }
        let limit = HeartbeatSettings.maximumMilliseconds
        guard (1...limit).contains(heartbeat.intervalMilliseconds) else {
            throw fail("heartbeat.interval_ms", "\(heartbeat.intervalMilliseconds) is outside 1...\(limit)")
        }
        guard (1...limit).contains(heartbeat.timeoutMilliseconds) else {
            throw fail("heartbeat.timeout_ms", "\(heartbeat.timeoutMilliseconds) is outside 1...\(limit)")
        }
        guard heartbeat.timeoutMilliseconds > heartbeat.intervalMilliseconds else {
            throw fail("heartbeat.timeout_ms", "\(heartbeat.timeoutMilliseconds) must be greater than interval_ms (\(heartbeat.intervalMilliseconds))")
        }
        guard !nodes.isEmpty else { throw fail("nodes", "at least one node is required") }

        var firstIndex: [NodeID: Int] = [:]
        for (i, node) in nodes.enumerated() {
            if let j = firstIndex[node.id] { throw fail("nodes[\(i)].id", "'\(node.id)' is already the id of nodes[\(j)]") }
            firstIndex[node.id] = i
        }

        typealias Process = (field: String, listen: Address, advertise: Address, metrics: Address?, data: String)
        let processes: [Process] = [("master", master.listen, master.advertise, master.metrics, master.data)]
            + nodes.enumerated().map { i, n in ("nodes[\(i)]", n.listen, n.advertise, n.metrics, n.data) }

        var bound: [(field: String, address: Address)] = []
        var advertised: [(field: String, address: Address)] = []
        var directories: [(field: String, path: DirectoryPath)] = []
        for p in processes {
            if p.advertise.isWildcard {
                throw fail("\(p.field).advertise", "'\(p.advertise)' is a wildcard address nobody can connect to (advertise defaults to listen); set advertise to an address peers can reach")
            }
            if p.advertise.port == 0 && p.listen.port != 0 {
                throw fail("\(p.field).advertise", "port 0 is only meaningful when listen's port is 0 too")
            }
            for (field, address) in [("\(p.field).listen", p.listen), ("\(p.field).metrics", p.metrics)] {
                guard let address, address.port != 0 else { continue }
                if let other = bound.first(where: { $0.address.port == address.port && ($0.address.host == address.host || $0.address.isWildcard || address.isWildcard) }) {
                    throw fail(field, "'\(address)' clashes with \(other.field) '\(other.address)'")
                }
                bound.append((field, address))
            }
            if p.advertise.port != 0 {
                if let other = advertised.first(where: { $0.address == p.advertise }) {
                    throw fail("\(p.field).advertise", "'\(p.advertise)' is also advertised by \(other.field)")
                }
                advertised.append((p.field, p.advertise))
            }
            guard !p.data.isEmpty else { throw fail("\(p.field).data", "must not be empty") }
            let path = DirectoryPath(p.data)
            for other in directories {
                if other.path == path {
                    throw fail("\(p.field).data", "'\(p.data)' is the same directory as \(other.field)")
                }
                if other.path.contains(path) || path.contains(other.path) {
                    throw fail("\(p.field).data", "'\(p.data)' and \(other.field) are nested; each process needs a directory of its own")
                }
            }
            directories.append(("\(p.field).data", path))
        }

        self.clusterID = clusterID
        self.chainID = chainID
        self.master = master
        self.heartbeat = heartbeat
        self.nodes = nodes
    }
}

/// Where the master listens and keeps its state.
public struct MasterSpec: Hashable, Sendable {
    /// The address the master binds; port 0 picks a free port.
    public var listen: Address
    /// The address nodes and clients connect to; defaults to ``listen``.
    public var advertise: Address
    /// Where the master serves metrics, if anywhere.
    public var metrics: Address?
    /// The master's data directory (`master.json` lives there); relative to the working directory.
    public var data: String

    /// Creates a master spec; `advertise` defaults to `listen`.
    public init(listen: Address, advertise: Address? = nil, metrics: Address? = nil, data: String) {
        self.listen = listen
        self.advertise = advertise ?? listen
        self.metrics = metrics
        self.data = data
    }
}

/// One storage node of the chain.
public struct NodeSpec: Hashable, Sendable {
    /// The node's id.
    public var id: NodeID
    /// The address the node binds; port 0 picks a free port.
    public var listen: Address
    /// The address peers, the master and clients connect to; defaults to ``listen``.
    public var advertise: Address
    /// Where the node serves metrics, if anywhere.
    public var metrics: Address?
    /// The node's data directory; relative to the working directory.
    public var data: String

    /// Creates a node spec; `advertise` defaults to `listen`.
    public init(id: NodeID, listen: Address, advertise: Address? = nil, metrics: Address? = nil, data: String) {
        self.id = id
        self.listen = listen
        self.advertise = advertise ?? listen
        self.metrics = metrics
        self.data = data
    }
}

/// Heartbeat settings: members heartbeat every ``interval``; the master declares a member dead
/// after ``timeout`` without one. Too short a timeout gives false failovers and flapping, too
/// long gives long unavailability.
public struct HeartbeatSettings: Hashable, Sendable {
    /// The largest interval or timeout accepted, in milliseconds (one hour).
    public static let maximumMilliseconds = 3_600_000

    /// Milliseconds between heartbeats (default 100).
    public var intervalMilliseconds: Int
    /// Milliseconds without a heartbeat after which a member is declared dead (default 1000);
    /// greater than ``intervalMilliseconds``.
    public var timeoutMilliseconds: Int

    /// Creates settings; the defaults are those of a topology file without a `heartbeat` section.
    public init(intervalMilliseconds: Int = 100, timeoutMilliseconds: Int = 1000) {
        self.intervalMilliseconds = intervalMilliseconds
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    /// ``intervalMilliseconds`` as a `Duration`.
    public var interval: Duration { .milliseconds(intervalMilliseconds) }
    /// ``timeoutMilliseconds`` as a `Duration`.
    public var timeout: Duration { .milliseconds(timeoutMilliseconds) }
}

/// A directory path compared lexically: empty and `.` components are dropped, so `a/b`, `./a/b`
/// and `a//b/` are one directory. `..` and symbolic links are not resolved.
struct DirectoryPath: Hashable {
    let absolute: Bool
    let components: [Substring]

    init(_ path: String) {
        absolute = path.hasPrefix("/")
        components = path.split(separator: "/").filter { $0 != "." }
    }

    /// Whether `other` lies strictly inside this directory.
    func contains(_ other: DirectoryPath) -> Bool {
        absolute == other.absolute && other.components.count > components.count
            && Array(other.components.prefix(components.count)) == components
    }
}
