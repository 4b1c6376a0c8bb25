"""Writes tests/vectors/aws/pricing-getproducts-*.json.

Run from the repo root; kept so the vectors can be re-made and reviewed.
"""
import hashlib
import json

PUB = "2025-11-20T19:35:41Z"
VERSION = "20251120193541"
EFFECTIVE = "2025-11-01T00:00:00Z"
TERM = "JRTCKXETXF"  # the On-Demand offer term code AWS uses in every offer file

def sku(*parts):
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16].upper()

def item(service, family, attrs, unit, usd, description):
    s = sku(service, attrs.get("usagetype", ""), attrs.get("regionCode", ""))
    rate = f"{s}.{TERM}.6YS6EN2CT7"
    attrs = {**attrs, "servicecode": service}
    doc = {
        "product": {"productFamily": family, "attributes": attrs, "sku": s},
        "serviceCode": service,
        "terms": {"OnDemand": {f"{s}.{TERM}": {
            "priceDimensions": {rate: {
                "unit": unit, "endRange": "Inf", "description": description, "appliesTo": [],
                "rateCode": rate, "beginRange": "0", "pricePerUnit": {"USD": usd}}},
            "sku": s, "effectiveDate": EFFECTIVE, "offerTermCode": TERM, "termAttributes": {}}}},
        "version": VERSION,
        "publicationDate": PUB,
    }
    return json.dumps(doc, separators=(",", ":"))

def br(model, provider, inference_type, usagetype, usd, feature="On-demand Inference",
       unit="1K tokens", extra=None, region="us-east-1", location="US East (N. Virginia)"):
    attrs = {"regionCode": region, "usagetype": usagetype, "locationType": "AWS Region",
             "location": location, "inferenceType": inference_type, "model": model,
             "provider": provider, "feature": feature, "operation": "Usage"}
    attrs.update(extra or {})
    return item("AmazonBedrock", "Amazon Bedrock", attrs, unit, usd,
                f"${usd} per {unit} {inference_type.lower()} for {model} in {location}")

def fm(name, usagetype, usd, unit="1M tokens", desc=None):
    attrs = {"regionCode": "us-east-1", "usagetype": usagetype, "locationType": "AWS Region",
             "location": "US East (N. Virginia)", "servicename": f"{name} (Amazon Bedrock Edition)",
             "operation": "Usage"}
    return item("AmazonBedrockFoundationModels", "Bedrock Foundation Models", attrs, unit, usd,
                desc or f"AWS Marketplace software usage|us-east-1|{usagetype.split('_', 1)[1]}")

page1 = [
    br("Nova Pro", "Amazon", "Input tokens", "USE1-NovaPro-input-tokens", "0.0008000000"),
    br("Nova Pro", "Amazon", "Output tokens", "USE1-NovaPro-output-tokens", "0.0032000000"),
    br("Nova Pro", "Amazon", "Cache read input tokens", "USE1-NovaPro-cache-read-input-tokens",
       "0.0002000000"),
    br("Nova Pro", "Amazon", "Input tokens flex", "USE1-NovaPro-input-tokens-flex", "0.0004000000",
       extra={"service_tier": "Flex"}),
    br("Nova Pro", "Amazon", "Input tokens", "USE1-NovaPro-input-tokens-batch", "0.0004000000",
       feature="Batch Inference"),
    br("Nova Pro", "Amazon", "Input tokens", "USE1-NovaPro-Model-Customization-input-tokens",
       "0.0010000000", feature="Model Customization"),
    br("Llama 3.1 8B Instruct", "Meta", "Input tokens", "USE1-Llama3.1-8B-input-tokens", "0.0002200000"),
    br("Llama 3.1 8B Instruct", "Meta", "Output tokens", "USE1-Llama3.1-8B-output-tokens", "0.0002200000"),
]
page2 = [
    br("Nova Lite", "Amazon", "Input tokens", "USE1-NovaLite-input-tokens", "0.0000600000"),
    br("Nova Lite", "Amazon", "Output tokens", "USE1-NovaLite-output-tokens", "0.0002400000"),
    br("DeepSeek-R1", "DeepSeek", "Input tokens", "USE1-DeepSeek-R1-input-tokens", "0.0013500000"),
    br("DeepSeek-R1", "DeepSeek", "Output tokens", "USE1-DeepSeek-R1-output-tokens", "0.0054000000"),
    br("Nova 2 Lite", "Amazon", "Input tokens", "USE1-Nova2.0Lite-input-tokens", "0.0003000000"),
    br("Nova 2 Lite", "Amazon", "Output tokens", "USE1-Nova2.0Lite-output-tokens", "0.0025000000"),
    br("Nova Canvas", "Amazon", "Image generation", "USE1-NovaCanvas-images-standard", "0.0400000000",
       unit="Images"),
]
fmodels = [
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_InputTokenCount-Units", "3.3000000000", unit="Units",
       desc="$3.30 per 1M input tokens"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_OutputTokenCount-Units", "16.5000000000", unit="Units",
       desc="$16.50 per 1M output tokens"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_CacheReadInputTokenCount-Units", "0.3300000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_CacheWriteInputTokenCount-Units", "4.1250000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_InputTokenCount_Global-Units", "3.0000000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_OutputTokenCount_Global-Units", "15.0000000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_CacheReadInputTokenCount_Global-Units", "0.3000000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_CacheWriteInputTokenCount_Global-Units", "3.7500000000"),
    fm("Claude Sonnet 4.5", "USE1-MP:USE1_InputTokenCount_Batch-Units", "1.6500000000"),
    fm("Claude Haiku 4.5", "USE1-MP:USE1_InputTokenCount-Units", "1.1000000000"),
    fm("Claude Haiku 4.5", "USE1-MP:USE1_OutputTokenCount-Units", "5.5000000000"),
    fm("Claude Haiku 4.5", "USE1-MP:USE1_InputTokenCount_Global-Units", "1.0000000000"),
    fm("Claude Haiku 4.5", "USE1-MP:USE1_OutputTokenCount_Global-Units", "5.0000000000"),
    fm("Claude Opus 4.1", "USE1-MP:USE1_input_tokens_standard-Units", "15.0000000000"),
    fm("Claude Opus 4.1", "USE1-MP:USE1_output_tokens_standard-Units", "75.0000000000"),
    fm("Claude Opus 4.1", "USE1-MP:USE1_output_tokens_batch-Units", "37.5000000000"),
    fm("Stable Image Core", "USE1-MP:USE1_created_image_stable_image_core-Units", "0.0400000000",
       unit="Units", desc="per image"),
]
def write(name, items, token=None):
    doc = {"FormatVersion": "aws_v1", "PriceList": items}
    if token:
        doc["NextToken"] = token
    with open(f"tests/vectors/aws/{name}", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
write("pricing-getproducts-bedrock-page1.json", page1,
      "eyJzZXJ2aWNlQ29kZSI6IkFtYXpvbkJlZHJvY2siLCJvZmZzZXQiOjh9")
write("pricing-getproducts-bedrock-page2.json", page2)
write("pricing-getproducts-foundationmodels.json", fmodels)
