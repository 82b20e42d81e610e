"""The features: where they live (layouts), which files they are (files), their headers and values (sources), the value
check's read (value_check), the collection (feature_set)."""
