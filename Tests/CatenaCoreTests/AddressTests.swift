import CatenaCore
import Testing

@Suite("Address")
struct AddressTests {
    @Test(arguments: [
        ("127.0.0.1:7000", "127.0.0.1", 7000),
        ("localhost:0", "localhost", 0),
        ("node-1.example_net:65535", "node-1.example_net", 65535),
        ("0.0.0.0:7001", "0.0.0.0", 7001),
        ("[::1]:7000", "::1", 7000),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("[::ffff:10.0.0.1]:9", "::ffff:10.0.0.1", 9),
    ])
    func parsesAndPrintsBack(text: String, host: String, port: Int) throws {
        let address = try Address(parsing: text)
        #expect(address == Address(host: host, port: UInt16(port)))
        #expect(address.description == text)
        #expect(try Address(parsing: address.description) == address)
    }

    @Test(arguments: [
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("", "'' is not HOST:PORT"),
        (":7000", "':7000' has an empty host (write 0.0.0.0 to listen on every interface)"),
        ("host:", "'host:' has port '', which is not a number in 0...65535"),
        ("host:http", "'host:http' has port 'http', which is not a number in 0...65535"),
        ("host:-1", "'host:-1' has port '-1', which is not a number in 0...65535"),
        ("host:+80", "'host:+80' has port '+80', which is not a number in 0...65535"),
        ("host:65536", "'host:65536' has port 65536, outside 0...65535"),
        ("host:123456", "'host:123456' has port '123456', which is not a number in 0...65535"),
        ("::1:7000", "'::1:7000' is not HOST:PORT (write an IPv6 address in brackets: '[::1]:7000')"),
        ("[::1]7000", "'[::1]7000' is not HOST:PORT (expected ':PORT' after ']')"),
        ("[::1:7000", "'[::1:7000' is not HOST:PORT (an IPv6 address needs a closing ']')"),
        ("[]:7000", "'[]:7000' has host '', which is not an IPv6 address"),
        ("[1::2::3]:7000", "'[1::2::3]:7000' has host '1::2::3', which is not an IPv6 address"),
        ("[example.com]:7000", "'[example.com]:7000' has host 'example.com', which is not an IPv6 address"),
        ("[fe80::1%]:7000", "'[fe80::1%]:7000' has host 'fe80::1%', which is not an IPv6 address"),
        ("300.0.0.1:7000", "'300.0.0.1:7000' has host '300.0.0.1', which is not an IPv4 address"),
        ("10.0.0:7000", "'10.0.0:7000' has host '10.0.0', which is not an IPv4 address"),
        ("my host:7000", "'my host:7000' has host 'my host'; a host name is 1 to 253 characters of A-Z a-z 0-9 . - _"),
    ])
    func refusesWithAMessageSayingWhy(text: String, message: String) {
        #expect(throws: CatenaError(.invalidArgument, message)) { try Address(parsing: text) }
    }

    @Test func refusesOverlongHostNames() throws {
        let label = String(repeating: "a", count: 63)
        let longest = [label, label, label, String(repeating: "b", count: 61)].joined(separator: ".")
        #expect(longest.utf8.count == 253)
        #expect(try Address(parsing: longest + ":1").host == longest)
        #expect(throws: CatenaError.self) { try Address(parsing: longest + "b:1") }
    }

    @Test func wildcardsAreTheUnspecifiedAddressesOnly() throws {
        #expect(try Address(parsing: "0.0.0.0:1").isWildcard)
        #expect(try Address(parsing: "[::]:1").isWildcard)
        #expect(try Address(parsing: "[0:0::0]:1").isWildcard)
        #expect(try !Address(parsing: "127.0.0.1:1").isWildcard)
        #expect(try !Address(parsing: "[::1]:1").isWildcard)
        #expect(try !Address(parsing: "localhost:1").isWildcard)
    }
}
