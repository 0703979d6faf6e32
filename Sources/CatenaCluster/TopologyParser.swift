import CatenaCore
import Yams

/// Reads topology YAML (schema version 1) into a ``Topology``, one field at a time, so every error
/// names its field. Values are read from the scalars' text, never from YAML's type guesses: an id
/// `007` stays `007`, and an address is never taken for a sexagesimal number. A plain empty, `~`
/// or `null` value counts as absent. Unknown keys are refused at every level.
struct TopologyParser {
    /// Starts every error message: usually the file's path.
    let source: String

    func parse(_ yaml: String) throws(CatenaError) -> Topology {
        let root = try compose(yaml)
        guard case .mapping(let mapping) = root else {
            throw CatenaError(.invalidArgument, "\(source): expected a mapping of topology fields (version, cluster, master, nodes, ...), found \(describe(root))")
        }
        // The version first: a newer file should be refused as newer, not for its new keys.
        guard let versionNode = mapping["version"], versionNode.null == nil else {
            throw fail("version", "is required (this build reads topology version \(Topology.schemaVersion))")
        }
        let version = try integer(versionNode, at: "version", in: 0...UInt64.max)
        guard version == UInt64(Topology.schemaVersion) else {
            throw CatenaError(.unsupportedVersion, "\(source): version: \(version) is not supported; this build reads topology version \(Topology.schemaVersion)")
        }

        let top = try fields(root, at: nil, allowed: ["version", "cluster", "chain", "master", "heartbeat", "nodes"], what: "the top level")
        let clusterID = try string(try required(top, "cluster", in: nil), at: "cluster", expected: "a cluster id")
        var chainID: ChainID = 1
        if let node = top["chain"] {
            chainID = ChainID(try integer(node, at: "chain", in: 1...UInt64(ChainID.max)))
        }
        let master = try masterSpec(try required(top, "master", in: nil))
        var heartbeat = HeartbeatSettings()
        if let node = top["heartbeat"] {
            heartbeat = try heartbeatSettings(node)
        }
        let nodesNode = try required(top, "nodes", in: nil)
        guard case .sequence(let list) = nodesNode else {
            throw fail("nodes", "expected a list of nodes, head first, found \(describe(nodesNode))")
        }
        var nodes: [NodeSpec] = []
        for (i, node) in list.enumerated() {
            nodes.append(try nodeSpec(node, at: "nodes[\(i)]"))
        }
        return try Topology(source: source, clusterID: clusterID, chainID: chainID, master: master, heartbeat: heartbeat, nodes: nodes)
    }

    private func masterSpec(_ node: Yams.Node) throws(CatenaError) -> MasterSpec {
        let f = try fields(node, at: "master", allowed: ["listen", "advertise", "metrics", "data"], what: "master")
        return MasterSpec(
            listen: try address(try required(f, "listen", in: "master"), at: "master.listen"),
            advertise: try optionalAddress(f["advertise"], at: "master.advertise"),
            metrics: try optionalAddress(f["metrics"], at: "master.metrics"),
            data: try string(try required(f, "data", in: "master"), at: "master.data", expected: "a directory path")
        )
    }

    private func heartbeatSettings(_ node: Yams.Node) throws(CatenaError) -> HeartbeatSettings {
        let f = try fields(node, at: "heartbeat", allowed: ["interval_ms", "timeout_ms"], what: "heartbeat")
        var settings = HeartbeatSettings()
        let range = 1...UInt64(HeartbeatSettings.maximumMilliseconds)
        if let n = f["interval_ms"] { settings.intervalMilliseconds = Int(try integer(n, at: "heartbeat.interval_ms", in: range)) }
        if let n = f["timeout_ms"] { settings.timeoutMilliseconds = Int(try integer(n, at: "heartbeat.timeout_ms", in: range)) }
        return settings
    }

    private func nodeSpec(_ node: Yams.Node, at path: String) throws(CatenaError) -> NodeSpec {
        let f = try fields(node, at: path, allowed: ["id", "listen", "advertise", "data", "metrics"], what: "a node")
        let idText = try string(try required(f, "id", in: path), at: "\(path).id", expected: "a node id")
        guard NodeID.isValidIdentifier(idText) else {
            throw fail("\(path).id", "'\(idText)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        let id: NodeID
        do { id = try NodeID(idText) } catch { preconditionFailure("NodeID refused a valid identifier: \(error)") }
        return NodeSpec(
            id: id,
            listen: try address(try required(f, "listen", in: path), at: "\(path).listen"),
            advertise: try optionalAddress(f["advertise"], at: "\(path).advertise"),
            metrics: try optionalAddress(f["metrics"], at: "\(path).metrics"),
            data: try string(try required(f, "data", in: path), at: "\(path).data", expected: "a directory path")
        )
    }

    // MARK: Field readers

    private func fail(_ field: String, _ problem: String) -> CatenaError {
        CatenaError(.invalidArgument, "\(source): \(field): \(problem)")
    }

    /// The entries of the mapping `node` (the ones with a non-null value), refusing keys not in `allowed`.
    private func fields(_ node: Yams.Node, at path: String?, allowed: [String], what: String) throws(CatenaError) -> [String: Yams.Node] {
        guard case .mapping(let mapping) = node else {
            throw fail(path ?? "(top level)", "expected a mapping with \(allowed.joined(separator: ", ")), found \(describe(node))")
        }
        var out: [String: Yams.Node] = [:]
        for (key, value) in mapping {
            let name = key.scalar?.string ?? describe(key)
            guard allowed.contains(name) else {
                throw fail(join(path, name), "unknown key (\(what) takes \(allowed.joined(separator: ", ")))")
            }
            if value.null == nil { out[name] = value }
        }
        return out
    }

    private func required(_ fields: [String: Yams.Node], _ key: String, in path: String?) throws(CatenaError) -> Yams.Node {
        guard let node = fields[key] else { throw fail(join(path, key), "is required") }
        return node
    }

    private func string(_ node: Yams.Node, at path: String, expected: String) throws(CatenaError) -> String {
        guard case .scalar(let scalar) = node else { throw fail(path, "expected \(expected), found \(describe(node))") }
        return scalar.string
    }

    private func integer(_ node: Yams.Node, at path: String, in range: ClosedRange<UInt64>) throws(CatenaError) -> UInt64 {
        let text = try string(node, at: path, expected: "a whole number")
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw fail(path, "'\(text)' is not a whole number")
        }
        guard let value = UInt64(text), range.contains(value) else {
            throw fail(path, "\(text) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    private func address(_ node: Yams.Node, at path: String) throws(CatenaError) -> Address {
        let text = try string(node, at: path, expected: "HOST:PORT")
        do {
            return try Address(parsing: text)
        } catch {
            throw fail(path, error.message)
        }
    }

    private func optionalAddress(_ node: Yams.Node?, at path: String) throws(CatenaError) -> Address? {
        guard let node else { return nil }
        return try address(node, at: path)
    }

    private func join(_ path: String?, _ key: String) -> String {
        path.map { "\($0).\(key)" } ?? key
    }

    private func describe(_ node: Yams.Node) -> String {
        switch node {
        case .scalar(let scalar): return "'\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    // MARK: YAML

    private func compose(_ yaml: String) throws(CatenaError) -> Yams.Node {
        let root: Yams.Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw CatenaError(.invalidArgument, describe(error))
        } catch {
            throw CatenaError(.invalidArgument, "\(source): not valid YAML: \(error)")
        }
        guard let root else {
            throw CatenaError(.invalidArgument, "\(source): is empty; expected a topology (version, cluster, master, nodes, ...)")
        }
        return root
    }

    private func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let context = context.map { " (\($0.text) at line \($0.mark.line))" } ?? ""
            return "\(source):\(mark.line):\(mark.column): not valid YAML: \(problem)\(context)"
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return "\(source):\(context.mark.line): key \(keys) appears twice in one mapping"
        default:
            return "\(source): not valid YAML: \(error)"
        }
    }
}
