-- Outbound Messages of BENCH_NOTIFICATIONS Contact notifications each, every id unique.
--
-- The envelope is the one Salesforce sends (as in examples/payloads and tests/om_payloads.py),
-- for the example org of examples/org-map.toml. Notification and record ids are 15-character
-- ids numbered seq * notifications + i, so the harness can list every id a run acked.

bench = {}
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local path = os.getenv("BENCH_PATH") or "/webhooks/salesforce/outbound-messages"
local notifications = tonumber(os.getenv("BENCH_NOTIFICATIONS") or "1")
local org15 = os.getenv("BENCH_ORG") or "00D1I000003qqqE"

local head = [[<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>]] .. org15 .. [[</OrganizationId>
   <ActionId>04k1I000000bmsHQAQ</ActionId>
   <SessionId>00D1I000003qqqE!AQ0AQBench.Session.Value-7Hx2</SessionId>
   <EnterpriseUrl>https://na73.salesforce.com/services/Soap/c/41.0/]] .. org15 .. [[</EnterpriseUrl>
   <PartnerUrl>https://na73.salesforce.com/services/Soap/u/41.0/]] .. org15 .. [[</PartnerUrl>]]
local tail = [[

  </notifications>
 </soapenv:Body>
</soapenv:Envelope>]]
local notification = [[

   <Notification>
    <Id>%s</Id>
    <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>%s</sf:Id>
     <sf:LastName>Name %d</sf:LastName>
     <sf:Email>bench%d@example.com</sf:Email>
    </sObject>
   </Notification>]]

function bench.build(seq)
    local parts = { head }
    for i = 0, notifications - 1 do
        local number = seq * notifications + i
        parts[#parts + 1] = string.format(
            notification, bench.id15("04l", number), bench.id15("003", number), number, number)
    end
    parts[#parts + 1] = tail
    local headers = { ["Content-Type"] = "text/xml; charset=utf-8", ["SOAPAction"] = '""' }
    return "POST", path, headers, table.concat(parts)
end

dofile(here .. "common.lua")
