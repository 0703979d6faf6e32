import CatenaCore

/// The layout of a node's data directory.
///
/// ```
/// IDENTITY              cluster id, node id, on-disk format version (text, written once)
/// LOCK                  flock'ed by the process that has the directory open
/// STATE                 commit watermark and compacted-through LSN (binary, replaced atomically)
/// <id>.seg              log segments, 20-digit zero-padded segment id
/// <id>.hint             index hints of sealed segments
/// *.tmp                 files being written; removed at start-up
/// ```
public struct DataDirectory: Sendable {
    /// The on-disk format version this build writes and reads.
    public static let formatVersion = 1

    /// The directory's path.
    public let path: String

    /// Creates a layout over `path`.
    public init(path: String) {
        self.path = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
    }

    var identity: String { path + "/IDENTITY" }
    var lock: String { path + "/LOCK" }
    var state: String { path + "/STATE" }

    func segment(_ id: UInt64) -> String { path + "/" + DataDirectory.name(id) + ".seg" }
    func hint(_ id: UInt64) -> String { path + "/" + DataDirectory.name(id) + ".hint" }

    static func name(_ id: UInt64) -> String {
        let digits = String(id)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    /// The segment id a file name names, if it is a segment file.
    static func segmentID(fromName name: String) -> UInt64? {
        guard name.hasSuffix(".seg"), name.count == 24 else { return nil }
        return UInt64(name.dropLast(4))
    }
}

/// Who owns a data directory. Written once when the directory is created; a node started with
/// another cluster or node id refuses the directory.
public struct NodeIdentity: Hashable, Sendable {
    /// The cluster the data belongs to.
    public var clusterID: String
    /// The node the data belongs to.
    public var nodeID: String
    /// The on-disk format version.
    public var formatVersion: Int

    /// Creates an identity.
    public init(clusterID: String, nodeID: String, formatVersion: Int = DataDirectory.formatVersion) {
        self.clusterID = clusterID
        self.nodeID = nodeID
        self.formatVersion = formatVersion
    }

    /// Checks that an id is 1 to 64 characters of `[A-Za-z0-9._-]`.
    public static func validate(id: String, what: String) throws(CatenaError) {
        guard NodeID.isValidIdentifier(id) else { throw CatenaError(.invalidArgument, "\(what) '\(id)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -") }
    }

    func encoded() -> [UInt8] {
        Array("catena-data-directory\nformat-version=\(formatVersion)\ncluster-id=\(clusterID)\nnode-id=\(nodeID)\n".utf8)
    }

    static func decode(_ bytes: [UInt8], path: String) throws(CatenaError) -> NodeIdentity {
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n").map(String.init)
        guard lines.first == "catena-data-directory" else {
            throw CatenaError(.directoryUnreadable, "\(path) is not a Catena identity file")
        }
        var fields: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        guard let v = fields["format-version"].flatMap(Int.init), let c = fields["cluster-id"], let n = fields["node-id"] else {
            throw CatenaError(.directoryUnreadable, "\(path) is incomplete (needs format-version, cluster-id, node-id)")
        }
        return NodeIdentity(clusterID: c, nodeID: n, formatVersion: v)
    }
}
