import CatenaCluster
import CatenaCore
import Foundation
import Testing

/// The repository's root, found from this file's path (Tests/CatenaClusterTests/…).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

private let base = """
    version: 1
    cluster: test
    chain: 7
    master:
      listen: 127.0.0.1:7000
      data: state/master
    heartbeat:
      interval_ms: 50
      timeout_ms: 400
    nodes:
      - id: a
        listen: 0.0.0.0:7001
        advertise: a.example:7001
        metrics: 127.0.0.1:9101
        data: state/a
      - id: b
        listen: 127.0.0.1:7002
        data: state/b
    """

/// `base` with each `(old, new)` replaced once; `old` must occur in it, so no case can silently
/// test the unchanged file.
private func variant(_ replacements: (String, String)...) -> String {
    var text = base
    for (old, new) in replacements {
        guard let range = text.range(of: old) else { preconditionFailure("'\(old)' is not in the base topology") }
        text.replaceSubrange(range, with: new)
    }
    return text
}

private func parse(_ yaml: String) throws(CatenaError) -> Topology {
    try Topology.parse(yaml: yaml, source: "t.yaml")
}

private func id(_ s: String) -> NodeID { try! NodeID(s) }

@Suite("Topology")
struct TopologyTests {
    @Test func readsTheLocalTopologyFile() throws {
        let path = repositoryRoot + "/topology/local.yaml"
        let topology = try Topology.load(path: path)
        #expect(topology.clusterID == "local")
        #expect(topology.chainID == 1)
        #expect(topology.master == MasterSpec(
            listen: Address(host: "127.0.0.1", port: 7000), metrics: Address(host: "127.0.0.1", port: 9100), data: ".catena/local/master"))
        #expect(topology.heartbeat == HeartbeatSettings(intervalMilliseconds: 100, timeoutMilliseconds: 1000))
        #expect(topology.nodes.map(\.id.rawValue) == ["n1", "n2", "n3"])
        for (i, node) in topology.nodes.enumerated() {
            #expect(node.listen == Address(host: "127.0.0.1", port: UInt16(7001 + i)))
            #expect(node.advertise == node.listen)
            #expect(node.metrics == Address(host: "127.0.0.1", port: UInt16(9101 + i)))
            #expect(node.data == ".catena/local/n\(i + 1)")
        }
        let configuration = topology.initialConfiguration()
        #expect(configuration == (try ChainConfiguration(clusterID: "local", chainID: 1, epoch: 1, members: [
            ChainMember(id: id("n1"), address: "127.0.0.1:7001"),
            ChainMember(id: id("n2"), address: "127.0.0.1:7002"),
            ChainMember(id: id("n3"), address: "127.0.0.1:7003"),
        ])))
    }

    @Test func readsEveryFieldAndUsesAdvertisedAddressesForTheChain() throws {
        let t = try parse(base)
        #expect(t.clusterID == "test")
        #expect(t.chainID == 7)
        #expect(t.heartbeat.interval == .milliseconds(50))
        #expect(t.heartbeat.timeout == .milliseconds(400))
        #expect(t.master.advertise == Address(host: "127.0.0.1", port: 7000))
        #expect(t.master.metrics == nil)
        #expect(t.node(id("a")) == NodeSpec(
            id: id("a"), listen: Address(host: "0.0.0.0", port: 7001), advertise: Address(host: "a.example", port: 7001),
            metrics: Address(host: "127.0.0.1", port: 9101), data: "state/a"))
        #expect(t.node(id("b"))?.advertise == Address(host: "127.0.0.1", port: 7002))
        #expect(t.node(id("c")) == nil)
        let configuration = t.initialConfiguration()
        #expect(configuration.epoch == 1)
        #expect(configuration.chainID == 7)
        #expect(configuration.members.map(\.address) == ["a.example:7001", "127.0.0.1:7002"])
        #expect(configuration.head?.id == id("a"))
    }

    @Test func optionalFieldsTakeTheirDefaults() throws {
        let t = try parse("""
            version: 1
            cluster: c
            master: {listen: "[::1]:0", data: m}
            nodes:
              - {id: "007", listen: "[::1]:0", data: n}
              - {id: "1", listen: "[::1]:0", advertise: ~, metrics: null, data: o}
            """)
        #expect(t.chainID == 1)
        #expect(t.heartbeat == HeartbeatSettings(intervalMilliseconds: 100, timeoutMilliseconds: 1000))
        #expect(t.master.advertise == Address(host: "::1", port: 0))
        // Ids are the text as written, never YAML's number guesses.
        #expect(t.nodes.map(\.id.rawValue) == ["007", "1"])
        #expect(t.nodes[1].advertise == t.nodes[1].listen)
        #expect(t.nodes[1].metrics == nil)
        #expect(t.initialConfiguration().members.map(\.address) == ["[::1]:0", "[::1]:0"])
    }

    @Test func namesFileFieldAndProblem() {
        #expect(throws: CatenaError(.invalidArgument, "t.yaml: nodes[1].listen: '127.0.0.1' is not HOST:PORT")) {
            try parse(variant(("listen: 127.0.0.1:7002", "listen: 127.0.0.1")))
        }
    }

    @Test(arguments: [
        // Unknown keys, at every level.
        (variant(("cluster: test", "clustr: test")), "clustr: unknown key (the top level takes version, cluster, chain, master, heartbeat, nodes)"),
        (variant(("  data: state/master", "  dta: state/master")), "master.dta: unknown key (master takes listen, advertise, metrics, data)"),
        (variant(("interval_ms", "interval")), "heartbeat.interval: unknown key (heartbeat takes interval_ms, timeout_ms)"),
        (variant(("    data: state/b", "    data: state/b\n    adress: x:1")), "nodes[1].adress: unknown key (a node takes id, listen, advertise, data, metrics)"),
        // Missing and mistyped fields.
        (variant(("version: 1", "version: one")), "version: 'one' is not a whole number"),
        (variant(("version: 1\n", "")), "version: is required (this build reads topology version 1)"),
        (variant(("cluster: test", "cluster:")), "cluster: is required"),
        (variant(("cluster: test", "cluster: [a]")), "cluster: expected a cluster id, found a list"),
        (variant(("cluster: test", "cluster: te st")), "cluster: 'te st' must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        (variant(("chain: 7", "chain: 0")), "chain: 0 is outside 1...4294967295"),
        (variant(("chain: 7", "chain: 4294967296")), "chain: 4294967296 is outside 1...4294967295"),
        (variant(("chain: 7", "chain: 99999999999999999999")), "chain: 99999999999999999999 is outside 1...4294967295"),
        (variant(("chain: 7", "chain: 1.5")), "chain: '1.5' is not a whole number"),
        (variant(("chain: 7", "chain: -1")), "chain: '-1' is not a whole number"),
        (variant(("  listen: 127.0.0.1:7000\n", "")), "master.listen: is required"),
        (variant(("  listen: 127.0.0.1:7000", "  listen: {host: x}")), "master.listen: expected HOST:PORT, found a mapping"),
        (variant(("  data: state/master", "  data: ''")), "master.data: must not be empty"),
        (variant(("    data: state/b", "    data:")), "nodes[1].data: is required"),
        (variant(("  - id: a", "  - id: a/b")), "nodes[0].id: 'a/b' must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        (variant(("    listen: 127.0.0.1:7002", "    listen: 127.0.0.1:70000")), "nodes[1].listen: '127.0.0.1:70000' has port 70000, outside 0...65535"),
        (variant(("metrics: 127.0.0.1:9101", "metrics: 127.0.0.1")), "nodes[0].metrics: '127.0.0.1' is not HOST:PORT"),
        // Whole-topology rules.
        (variant(("  - id: b", "  - id: a")), "nodes[1].id: 'a' is already the id of nodes[0]"),
        (variant(("    data: state/b", "    data: ./state//a/")), "nodes[1].data: './state//a/' is the same directory as nodes[0].data"),
        (variant(("    data: state/b", "    data: state/master")), "nodes[1].data: 'state/master' is the same directory as master.data"),
        (variant(("    data: state/b", "    data: state/a/b")), "nodes[1].data: 'state/a/b' and nodes[0].data are nested; each process needs a directory of its own"),
        (variant(("  data: state/master", "  data: state")), "nodes[0].data: 'state/a' and master.data are nested; each process needs a directory of its own"),
        (variant(("    listen: 127.0.0.1:7002", "    listen: 127.0.0.1:7000")), "nodes[1].listen: '127.0.0.1:7000' clashes with master.listen '127.0.0.1:7000'"),
        (variant(("    listen: 127.0.0.1:7002", "    listen: 127.0.0.1:7001")), "nodes[1].listen: '127.0.0.1:7001' clashes with nodes[0].listen '0.0.0.0:7001'"),
        (variant(("    listen: 127.0.0.1:7002", "    listen: 127.0.0.1:9101")), "nodes[1].listen: '127.0.0.1:9101' clashes with nodes[0].metrics '127.0.0.1:9101'"),
        (variant(("    listen: 127.0.0.1:7002", "    listen: 127.0.0.1:7002\n    advertise: a.example:7001")), "nodes[1].advertise: 'a.example:7001' is also advertised by nodes[0]"),
        (variant(("    advertise: a.example:7001\n", "")), "nodes[0].advertise: '0.0.0.0:7001' is a wildcard address nobody can connect to (advertise defaults to listen); set advertise to an address peers can reach"),
        (variant(("    advertise: a.example:7001", "    advertise: a.example:0")), "nodes[0].advertise: port 0 is only meaningful when listen's port is 0 too"),
        (variant(("timeout_ms: 400", "timeout_ms: 50")), "heartbeat.timeout_ms: 50 must be greater than interval_ms (50)"),
        (variant(("interval_ms: 50", "interval_ms: 0")), "heartbeat.interval_ms: 0 is outside 1...3600000"),
        (variant(("timeout_ms: 400", "timeout_ms: 3600001")), "heartbeat.timeout_ms: 3600001 is outside 1...3600000"),
        ("version: 1\ncluster: c\nmaster: x\nnodes: [{id: a, listen: 'h:2', data: a}]", "master: expected a mapping with listen, advertise, metrics, data, found 'x'"),
        ("version: 1\ncluster: c\nmaster: {listen: 'h:1', data: m}\nheartbeat: []\nnodes: [{id: a, listen: 'h:2', data: a}]", "heartbeat: expected a mapping with interval_ms, timeout_ms, found a list"),
        ("version: 1\ncluster: c\nmaster: {listen: 'h:1', data: m}\nnodes: []", "nodes: at least one node is required"),
        ("version: 1\ncluster: c\nmaster: {listen: 'h:1', data: m}\nnodes: {id: a}", "nodes: expected a list of nodes, head first, found a mapping"),
        ("version: 1\ncluster: c\nmaster: {listen: 'h:1', data: m}\nnodes: [a]", "nodes[0]: expected a mapping with id, listen, advertise, data, metrics, found 'a'"),
    ])
    func refusesWithFileFieldAndProblem(yaml: String, message: String) {
        #expect(throws: CatenaError(.invalidArgument, "t.yaml: " + message)) { try parse(yaml) }
    }

    @Test func refusesOtherSchemaVersionsAsSuch() {
        // A newer file is refused for its version, not for the keys this build does not know.
        let newer = variant(("version: 1", "version: 2"), ("cluster: test", "cluster: test\nshards: 4"))
        #expect(throws: CatenaError(.unsupportedVersion, "t.yaml: version: 2 is not supported; this build reads topology version 1")) {
            try parse(newer)
        }
        #expect(throws: CatenaError(.unsupportedVersion, "t.yaml: version: 0 is not supported; this build reads topology version 1")) {
            try parse(variant(("version: 1", "version: 0")))
        }
    }

    @Test func reportsYAMLSyntaxErrorsWithTheirLine() {
        let message = "t.yaml:4:7: not valid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 3)"
        #expect(throws: CatenaError(.invalidArgument, message)) { try parse(variant(("chain: 7", "chain: [7"))) }

        #expect(throws: CatenaError(.invalidArgument, "t.yaml:2: key 'cluster' appears twice in one mapping")) {
            try parse(variant(("chain: 7", "chain: 7\ncluster: other")))
        }
    }

    @Test(arguments: [
        ("", "t.yaml: is empty; expected a topology (version, cluster, master, nodes, ...)"),
        ("# only a comment\n", "t.yaml: is empty; expected a topology (version, cluster, master, nodes, ...)"),
        ("- version: 1", "t.yaml: expected a mapping of topology fields (version, cluster, master, nodes, ...), found a list"),
    ])
    func refusesFilesThatAreNoTopology(yaml: String, message: String) {
        #expect(throws: CatenaError(.invalidArgument, message)) { try parse(yaml) }
    }

    @Test func loadNamesAMissingOrUnreadableFile() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        #expect(throws: CatenaError(.invalidArgument, "\(directory.path)/none.yaml: no such topology file")) {
            try Topology.load(path: directory.path + "/none.yaml")
        }
        let binary = directory.path + "/binary.yaml"
        try Data([0x76, 0x3A, 0xFF, 0xFE]).write(to: URL(fileURLWithPath: binary))
        #expect(throws: CatenaError(.invalidArgument, "\(binary): is not UTF-8 text")) { try Topology.load(path: binary) }

        let good = directory.path + "/good.yaml"
        try base.write(toFile: good, atomically: false, encoding: .utf8)
        #expect(try Topology.load(path: good) == parse(base))
        let bad = directory.path + "/bad.yaml"
        try variant(("chain: 7", "chain: x")).write(toFile: bad, atomically: false, encoding: .utf8)
        #expect(throws: CatenaError(.invalidArgument, "\(bad): chain: 'x' is not a whole number")) { try Topology.load(path: bad) }
    }

    @Test func buildingInCodeChecksTheSameRules() throws {
        let address = Address(host: "127.0.0.1", port: 0)
        let master = MasterSpec(listen: address, data: "m")
        let node = NodeSpec(id: id("a"), listen: address, data: "a")
        let topology = try Topology(clusterID: "c", master: master, nodes: [node])
        #expect(topology.chainID == 1)
        #expect(topology.heartbeat == HeartbeatSettings())
        #expect(topology == (try parse("""
            version: 1
            cluster: c
            master: {listen: "127.0.0.1:0", data: m}
            nodes: [{id: a, listen: "127.0.0.1:0", data: a}]
            """)))

        var twin = node
        twin.data = "b"
        #expect(throws: CatenaError(.invalidArgument, "topology: nodes[1].id: 'a' is already the id of nodes[0]")) {
            try Topology(clusterID: "c", master: master, nodes: [node, twin])
        }
        #expect(throws: CatenaError(.invalidArgument, "topology: chain: must be at least 1")) {
            try Topology(clusterID: "c", chainID: 0, master: master, nodes: [node])
        }
        #expect(throws: CatenaError(.invalidArgument, "topology: nodes: at least one node is required")) {
            try Topology(clusterID: "c", master: master, nodes: [])
        }
    }
}
